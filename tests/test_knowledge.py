"""Local knowledge base (assistant/knowledge.py): built from a tiny hand-made file,
plus one check on the shipped KB."""
from __future__ import annotations

import gzip
import json
import os
import time

import pytest

from assistant.knowledge import DEFAULT_KB, KnowledgeBase, Passage, fts_query
from finetune.build_kb import chunk, collection_name, split_of

PASSAGES = [
    ("GARD/1", "Glaucoma: symptoms", "Glaucoma often has no early symptoms. Over time it causes loss of side vision "
     "and, without treatment, blindness. Eye pressure may be raised."),
    ("GARD/1", "Glaucoma: treatment", "Eye drops that lower eye pressure are the usual first treatment for glaucoma; "
     "laser treatment and surgery are other options."),
    ("NIDDK/7", "Diabetes: information", "Diabetes is a disease in which blood glucose, also called blood sugar, is too "
     "high. Insulin helps glucose get into cells."),
    ("NHLBI/3", "High Blood Pressure: information", "High blood pressure is a common disease in which blood flows "
     "through blood vessels at higher than normal pressures."),
    ("CDC/9", "Lyme disease: causes", "Lyme disease is caused by the bacterium Borrelia burgdorferi and is "
     "transmitted to humans through the bite of infected blacklegged ticks."),
]


def write_kb(path, rows=PASSAGES):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, (doc_id, title, text) in enumerate(rows):
            f.write(json.dumps({"id": i, "doc_id": doc_id, "source": doc_id.split("/")[0],
                                "url": f"https://example.org/{i}", "title": title, "text": text}) + "\n")
    return path


@pytest.fixture
def kb(tmp_path):
    kb = KnowledgeBase(write_kb(tmp_path / "kb.jsonl.gz"), cache_dir=tmp_path / "cache", min_coverage=0.75)
    yield kb
    kb.close()


def test_search_ranks_the_matching_passage_first(kb):
    hits = kb.search("What are the symptoms of glaucoma?", k=3)
    assert hits and isinstance(hits[0], Passage)
    assert hits[0].title == "Glaucoma: symptoms"
    assert hits[0].doc_id == "GARD/1" and hits[0].source == "GARD" and hits[0].url.startswith("https://")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert kb.search("ticks bite bacterium")[0].doc_id == "CDC/9"


def test_porter_stemming(kb):
    assert kb.search("treating glaucoma with drops")[0].title == "Glaucoma: treatment"


def test_k_limits_results(kb):
    assert len(kb.search("disease blood pressure glaucoma diabetes", k=2)) == 2
    assert kb.search("glaucoma", k=0) == []


@pytest.mark.parametrize(
    "query",
    ['glaucoma"', 'NEAR(glaucoma eye)', "glaucoma AND OR NOT", "title:glaucoma", "gla*", "-glaucoma",
     "(((", "'; DROP TABLE passages; --", "glaucoma^2 {eye}", "\u00e9t\u00e9 \u2014 \U0001f600"],
)
def test_odd_queries_never_raise(kb, query):
    kb.search(query)  # any FTS5 syntax error would raise sqlite3.OperationalError


def test_fts_query_sanitization():
    assert fts_query("What ARE the symptoms of Glaucoma?!") == '"symptoms" OR "glaucoma"'
    assert fts_query('NEAR("x" -y*) title:eye') == '"near" OR "title" OR "eye"'
    assert fts_query("what is it?") == ""  # only stop words


def test_empty_and_stopword_queries(kb):
    assert kb.search("") == []
    assert kb.search("what is the") == []
    assert not kb.is_relevant([])


def test_relevance_threshold(kb):
    hits = kb.search("What are the symptoms of glaucoma?")
    assert hits[0].coverage == pytest.approx(1.0)
    assert kb.is_relevant(hits)
    off = kb.search("What is the capital of France and its blood vessels?")
    assert off and off[0].coverage < 0.75  # matches "blood vessels", but not the rest
    assert not kb.is_relevant(off)
    assert not kb.is_relevant(kb.search("who won the football world cup"))


def test_a_long_question_keeps_the_words_it_asks_about(kb):
    story = ("I am a retired teacher and my husband and I live near our grandchildren, we walk every morning, "
             "cook at home, read books, garden in spring, travel to the coast in summer, paint watercolours, "
             "sing in a choir, volunteer at the library, knit scarves, bake bread and play cards with friends "
             "on weekends, and lately our doctor mentioned something at a checkup.")
    question = story + " What are the symptoms of glaucoma?"
    assert len(fts_query(question, limit=None).split(" OR ")) > 32
    hits = kb.search(question)
    assert hits and hits[0].title == "Glaucoma: symptoms"  # the first 32 words held no "glaucoma"


def test_a_short_question_must_name_the_pages_topic(tmp_path):
    rows = [("NIDDK/1", "Interstitial Cystitis: treatment",
             "Bladder training and planned trips to the bathroom can ease interstitial cystitis."),
            ("NEI/2", "Glaucoma: symptoms", "Glaucoma often has no early symptoms.")]
    kb = KnowledgeBase(write_kb(tmp_path / "kb.jsonl.gz", rows), cache_dir=tmp_path / "cache")
    hits = kb.search("Where is the bathroom?")
    assert hits[0].coverage == pytest.approx(1.0) and hits[0].topic_named == 0  # every word, but not the topic
    assert not kb.is_relevant(hits)
    hits = kb.search("Can bladder training ease interstitial cystitis?")
    assert hits[0].topic_named == 1.0 and kb.is_relevant(hits)
    kb.close()


LYMPHOMA = [
    ("CancerGov/nhl", "Adult Non-Hodgkin Lymphoma: treatment", "Adult non-Hodgkin lymphoma is treated with "
     "chemotherapy. Non-Hodgkin lymphoma differs from Hodgkin lymphoma; Hodgkin lymphoma treatment is described "
     "elsewhere, with adult Hodgkin lymphoma."),
    ("CancerGov/hl", "Adult Hodgkin Lymphoma: treatment", "Treatment may include chemotherapy and radiation "
     "therapy, chosen by the stage of the disease, the patient's age and general health, and other factors "
     "discussed with the care team."),
]


def test_focus_words_the_question_does_not_name_lower_a_page(tmp_path, monkeypatch):
    from assistant import knowledge

    kb = KnowledgeBase(write_kb(tmp_path / "kb.jsonl.gz", LYMPHOMA + PASSAGES), cache_dir=tmp_path / "cache")
    question = "What are the treatments for adult Hodgkin lymphoma?"
    monkeypatch.setattr(knowledge, "FOCUS_PENALTY", 0.0)  # plain BM25 prefers the page naming it most often
    assert kb.search(question, k=1)[0].doc_id == "CancerGov/nhl"
    monkeypatch.undo()
    hits = kb.search(question, k=2)
    assert [h.doc_id for h in hits] == ["CancerGov/hl", "CancerGov/nhl"]  # scaled by 1 - 0.5 * 1/4
    assert hits[0].score > hits[1].score and hits[0].coverage == pytest.approx(1.0)
    # a question that names the longer focus still finds it
    assert kb.search("treatment of adult non-Hodgkin lymphoma", k=1)[0].doc_id == "CancerGov/nhl"
    kb.close()


def test_cache_is_reused_and_rebuilt_on_hash_change(tmp_path):
    src, cache = tmp_path / "kb.jsonl.gz", tmp_path / "cache"
    kb1 = KnowledgeBase(write_kb(src), cache_dir=cache)
    first = kb1.db_path
    kb1.close()
    assert first.exists() and first.name.startswith("kb-")
    mtime = first.stat().st_mtime_ns
    kb2 = KnowledgeBase(src, cache_dir=cache)
    assert kb2.db_path == first and first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    kb2.close()

    write_kb(src, PASSAGES + [("X/1", "Scurvy: causes", "Scurvy is caused by a lack of vitamin C.")])
    kb3 = KnowledgeBase(src, cache_dir=cache)
    assert kb3.db_path != first and not first.exists()  # new index, stale one removed
    assert kb3.search("scurvy vitamin")[0].doc_id == "X/1"
    assert len(kb3) == len(PASSAGES) + 1
    kb3.close()


@pytest.mark.parametrize("damage", [b"", b"not a database at all" * 100, "half"])
def test_a_damaged_index_is_built_again(tmp_path, damage):
    src, cache = tmp_path / "kb.jsonl.gz", tmp_path / "cache"
    kb = KnowledgeBase(write_kb(src), cache_dir=cache)
    path, whole = kb.db_path, kb.db_path.read_bytes()
    kb.close()
    path.write_bytes(whole[: len(whole) // 2] if damage == "half" else damage)
    kb = KnowledgeBase(src, cache_dir=cache)
    assert kb.db_path == path and len(kb) == len(PASSAGES) and kb.search("glaucoma")
    kb.close()


def test_another_knowledge_base_keeps_its_own_index(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = KnowledgeBase(write_kb(tmp_path / "a" / "kb.jsonl.gz"), cache_dir=cache)
    b = KnowledgeBase(write_kb(tmp_path / "b" / "kb.jsonl.gz", PASSAGES[:2]), cache_dir=cache)  # same name
    c = KnowledgeBase(write_kb(tmp_path / "b" / "kb-small.jsonl.gz", PASSAGES[:1]), cache_dir=cache)
    legacy = [cache / "kb-0123456789abcdef.sqlite", cache / "kb-kb-v1-0123456789abcdef.sqlite"]
    for path in legacy:
        path.write_bytes(b"")
    killed = cache / "kb-kb-1234.tmp"
    killed.write_bytes(b"")
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    a2 = KnowledgeBase(tmp_path / "a" / "kb.jsonl.gz", cache_dir=cache)
    assert a.db_path.exists() and b.db_path.exists() and c.db_path.exists() and len({a.db_path, b.db_path, c.db_path}) == 3
    assert a2.db_path == a.db_path and not any(p.exists() for p in [*legacy, killed])
    a2.close()
    c.close()
    a.close()
    b.close()


def test_an_unwritable_cache_is_a_clear_error(tmp_path):
    from assistant.knowledge import KnowledgeError

    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(KnowledgeError, match="cannot write the knowledge-base index"):
        KnowledgeBase(write_kb(tmp_path / "kb.jsonl.gz"), cache_dir=blocked / "cache")


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    kb = KnowledgeBase(write_kb(tmp_path / "kb.jsonl.gz"))
    assert kb.db_path.parent == tmp_path / "xdg" / "health-assistant"
    kb.close()


def test_a_cache_path_with_uri_characters_works_and_writes_nowhere_else(tmp_path):
    cache = tmp_path / "c#1 ?x %20"
    kb = KnowledgeBase(write_kb(tmp_path / "kb.jsonl.gz"), cache_dir=cache)
    assert kb.search("glaucoma") and kb.db_path.parent == cache
    kb.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["kb.jsonl.gz", cache.name])


def test_chunking_respects_sentences_and_size():
    sentence = "This sentence has exactly eight words in it."
    parts = chunk("  ".join([sentence] * 60))  # 480 words
    assert len(parts) >= 3
    for p in parts:
        assert 100 <= len(p.split()) <= 200 and p.endswith(".")
    assert chunk("What is X?  X is a short answer.") == ["X is a short answer."]  # GARD question heading dropped


def test_split_is_deterministic_and_roughly_80_10_10():
    keys = [f"focus {i}" for i in range(3000)]
    splits = [split_of(k) for k in keys]
    assert splits == [split_of(k) for k in keys]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert 0.77 < share["train"] < 0.83 and 0.08 < share["valid"] < 0.12 and 0.08 < share["test"] < 0.12
    assert collection_name("8_NHLBI_QA_XML") == "NHLBI" and collection_name("2_GARD_QA") == "GARD"


def test_shipped_kb(tmp_path):
    assert DEFAULT_KB.exists()
    assert DEFAULT_KB.stat().st_size < 15 * 1024 * 1024
    kb = KnowledgeBase(DEFAULT_KB, cache_dir=tmp_path)
    assert len(kb) > 10_000
    hits = kb.search("What are the symptoms of glaucoma?", k=3)
    assert any("glaucoma" in h.title.lower() for h in hits)
    assert kb.is_relevant(hits)
    assert not kb.is_relevant(kb.search("What is the capital of France?"))
    kb.close()
    splits = json.loads((DEFAULT_KB.parent / "splits.json").read_text())
    assert set(splits["documents"].values()) == {"train", "valid", "test"}
    assert (DEFAULT_KB.parent / "ATTRIBUTION.md").read_text().count("CC BY 4.0") >= 1


def test_grounding_puts_the_section_a_question_asks_for_first(tmp_path):
    from assistant.tasks import question_section, retrieve_grounding

    page = [("GHR/1", "Preeclampsia: information", "Preeclampsia is a complication of pregnancy in which affected "
             "women develop high blood pressure and protein in the urine, usually after the 20th week. Its symptoms "
             "include headaches and swelling; without treatment it can damage the kidneys, liver and brain."),
            ("GHR/1", "Preeclampsia: inheritance", "Preeclampsia often runs in families."),
            ("GHR/1", "Preeclampsia: frequency", "Preeclampsia is common: it affects 3 to 7 percent of pregnancies.")]
    path = tmp_path / "kb.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, (doc_id, title, text) in enumerate(page):  # one page: one url
            f.write(json.dumps({"id": i, "doc_id": doc_id, "source": "GHR", "url": "https://example.org/pe",
                                "focus": "Preeclampsia", "title": title, "text": text}) + "\n")
        for i, (doc_id, title, text) in enumerate(PASSAGES, len(page)):  # other pages
            f.write(json.dumps({"id": i, "doc_id": doc_id, "source": doc_id.split("/")[0],
                                "url": f"https://example.org/{i}", "title": title, "text": text}) + "\n")
    kb = KnowledgeBase(path, cache_dir=tmp_path / "cache", min_coverage=0.3)
    assert kb.search("What is preeclampsia?", k=3)[0].title != "Preeclampsia: information"  # short passages win
    assert [p.title for p in retrieve_grounding(kb, "What is preeclampsia?")][0] == "Preeclampsia: information"
    assert retrieve_grounding(kb, "How common is preeclampsia?")[0].title == "Preeclampsia: frequency"
    assert retrieve_grounding(kb, "Is preeclampsia inherited?")[0].title == "Preeclampsia: inheritance"
    # GHR files symptoms under "information"
    assert retrieve_grounding(kb, "What are the symptoms of preeclampsia?")[0].title == "Preeclampsia: information"
    assert question_section("my knee hurts after running") is None
    kb.close()


def test_a_sentence_two_diseases_share_stays_on_both_pages(tmp_path):
    from finetune.build_kb import build

    source = tmp_path / "medquad"
    shared = "This condition is inherited in an autosomal dominant pattern, which means one copy of the altered gene is enough."
    for i, focus in enumerate(("Axenfeld-Rieger syndrome", "Marfan syndrome", "Marfan Syndrome")):
        folder = source / ("1_GHR_QA" if i < 2 else "2_GARD_QA")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.xml").write_text(
            f'<Document id="{i}" source="GHR" url="https://example.org/{i}"><Focus>{focus}</Focus><QAPairs>'
            f'<QAPair pid="1"><Question qid="{i}_1" qtype="inheritance">Is {focus} inherited ?</Question>'
            f'<Answer>{shared}</Answer></QAPair></QAPairs></Document>')
    build(source, tmp_path / "kb")
    with gzip.open(tmp_path / "kb" / "medquad_passages.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    titles = sorted(r["title"] for r in rows)
    # kept for each disease; merged only between two pages on the same one (GARD copying GHR)
    assert titles == ["Axenfeld-Rieger syndrome: inheritance", "Marfan syndrome: inheritance"]
    assert [r for r in rows if r["title"].startswith("Marfan")][0]["also"] == ["GARD/2"]


@pytest.mark.parametrize("question, section", [
    ("What is (are) Marfan syndrome ?", "information"), ("what is gout", "information"),
    ("what are the side effects of metformin", "side effects"),  # not the overview: the search decides
    ("what is a normal blood sugar level for adults", None),
    ("How is gout treated?", "treatment"), ("Is it inherited?", "inheritance"), ("How common is lupus?", "frequency"),
])
def test_question_section(question, section):
    from assistant.tasks import question_section

    assert question_section(question) == section
