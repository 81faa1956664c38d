"""finetune.prepare_data on tiny hand-made copies of each source's format,
plus one check of MTS-Dialog on the real data (skipped where it is absent)."""
from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest

from assistant.tasks import answer_messages, summary_messages
from finetune import prepare_data
from finetune.sources import medquad, mts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class WordCounter:
    """Stands in for the SmolLM2 tokenizer: one whitespace word is one token."""

    def prompts(self, message_lists):
        return [sum(len(m["content"].split()) + 3 for m in ms) for ms in message_lists]

    def texts(self, texts):
        return [len(t.split()) for t in texts]


# --- fixtures mimicking each source ------------------------------------------------

def _csv(path: Path, rows: list[dict], fields=("ID", "section_header", "section_text", "dialogue")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


def _mts(root: Path) -> None:
    d = root / "mts-dialog"
    train = [{"ID": str(i), "section_header": "GENHX", "section_text": f"Patient {i} has pain.",
              "dialogue": f"Doctor: What brings you in?\r\nPatient: Pain number {i}."} for i in range(6)]
    # The known trap: train 4 is valid 0 and train 5 is test1 0, up to case and spacing.
    train[4]["dialogue"] = "Doctor: Any allergies?\nPatient: No."
    train[5]["dialogue"] = "Doctor: Do you smoke?\nPatient: Never."
    # And a near copy of test2 0, commas apart, which the exact check lets through.
    train.append({"ID": "6", "section_header": "CC", "section_text": "Rash.",
                  "dialogue": "Doctor: So, what happened to you today?\nPatient: A rash, on my arm."})
    _csv(d / "Main-Dataset/MTS-Dialog-TrainingSet.csv", train)
    _csv(d / "Main-Dataset/MTS-Dialog-ValidationSet.csv", [
        {"ID": "0", "section_header": "ALLERGY", "section_text": "None.", "dialogue": "doctor: any  allergies? \nPatient: no."},
        {"ID": "1", "section_header": "CC", "section_text": "Cough.", "dialogue": "Doctor: Why are you here?\nPatient: Cough."}])
    _csv(d / "Main-Dataset/MTS-Dialog-TestSet-1-MEDIQA-Chat-2023.csv", [
        {"ID": "0", "section_header": "FAM/SOCHX", "section_text": "Nonsmoker.", "dialogue": "Doctor: Do you smoke?  Patient: Never."},
        {"ID": "1", "section_header": "CC", "section_text": "Fever.", "dialogue": "Doctor: What is wrong?\nPatient: Fever."}])
    _csv(d / "Main-Dataset/MTS-Dialog-TestSet-2-MEDIQA-Sum-2023.csv", [
        {"ID": "0", "section_header": "CC", "section_text": "Rash.",
         "dialogue": "Doctor: So what happened to you today?\nPatient: A rash on my arm."}])
    for name in mts.AUGMENTED.values():  # originals again, then back-translations "TR=... <original id>"
        rows = train + [dict(r, ID=f"TR=EN-FR-EN {r['ID']}", dialogue=r["dialogue"].replace("Pain", "Ache"))
                        for r in train]
        _csv(d / name, rows)


def _aci(root: Path, words: int = 50) -> None:
    from finetune.sources.aci import DIVISIONS, SPLITS

    d = root / "aci-bench/data/challenge_data_json"
    d.mkdir(parents=True)
    for n, name in enumerate(SPLITS):
        short = "[doctor] hello .\n[patient] hi ."
        long = "[doctor] tell me more .\n" + "[patient] " + " ".join(["word"] * words)
        for division in DIVISIONS:
            items = [{"src": f"{short} visit {n}", "tgt": f"{division.upper()}\n\nShort note.", "file": f"D2N{n}01-aci-{division}"},
                     {"src": f"{long} visit {n}", "tgt": f"{division.upper()}\n\nLong note.", "file": f"D2N{n}02-aci-{division}"},
                     {"src": f"{short} other {n}", "tgt": f"{division}: #####EMPTY#####.\n", "file": f"D2N{n}03-aci-{division}"}]
            (d / f"{name}_{division}.json").write_text(json.dumps({"data": items}))


def _meqsum(root: Path, n: int = 210) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "QS"
    ws.append(["File", "CHQ", "Summary", None])
    for i in range(n):
        ws.append([f"{i}.txt", f"SUBJECT: drug {i}\nMESSAGE: who makes drug {i}? thanks", f"Who makes drug {i}?"])
    (root / "meqsum").mkdir()
    wb.save(root / "meqsum" / "MeQSum_ACL2019_BenAbacha_Demner-Fushman.xlsx")


def _medquad_doc(path: Path, doc_id: str | None, focus: str, pairs: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    qa = "".join(f'<QAPair pid="{i}"><Question qid="{doc_id}-{i}" qtype="{t}">{q}</Question><Answer>{a}</Answer></QAPair>'
                 for i, (t, q, a) in enumerate(pairs, 1))
    ident = f' id="{doc_id}"' if doc_id else ""
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?><Document{ident} source="X" url="https://x/{doc_id}">'
                    f"<Focus>{focus}</Focus><QAPairs>{qa}</QAPairs></Document>", encoding="utf-8")


def _medquad(root: Path, docs: int = 40) -> None:
    for i in range(docs):
        for folder in ("3_GHR_QA", "5_NIDDK_QA"):  # ids restart in every collection
            _medquad_doc(root / "medquad" / folder / f"{i:07d}.xml", f"{i:07d}", f"Disease {folder[0]}{i}", [
                ("information", f"What is (are) Disease {folder[0]}{i} ?", f"Disease {i} is rare. It affects {i} people."),
                ("symptoms", f"What are the symptoms of Disease {folder[0]}{i} ?", f"Fever.  - cough  - rash"),
                ("treatment", f"What are the treatments for Disease {folder[0]}{i} ?", ""),  # answer removed upstream
            ])
    _medquad_doc(root / "medquad" / "6_NINDS_QA" / "0000999.xml", None, "No id", [("causes", "What causes it ?", "Genes.")])


def _pubmedqa(root: Path) -> None:
    d = root / "pubmedqa" / "data"
    d.mkdir(parents=True)
    items = {str(1000 + i): {"QUESTION": f"Does treatment {i} work?", "CONTEXTS": [f"We studied {i}.", "It helped."],
                             "LABELS": ["BACKGROUND", "RESULTS"], "final_decision": ("yes", "no", "maybe")[i % 3],
                             "LONG_ANSWER": f"Treatment {i} works. More study is needed."} for i in range(70)}
    (d / "ori_pqal.json").write_text(json.dumps(items))
    (d / "test_ground_truth.json").write_text(json.dumps({k: items[k]["final_decision"] for k in list(items)[:10]}))


def _dialogsum(root: Path) -> None:
    d = root / "dialogsum-nc"
    (d / "DialogSum_Data").mkdir(parents=True)
    (d / "history-9a79c6b").mkdir()
    train = "\n".join(repr({"fname": f"train_{i}", "dialogue": f"#Person1#: Hi {i}.\n#Person2#: Hello.",
                            "summary": f"They greet {i}.", "topic": "greeting"}) for i in range(3))
    with zipfile.ZipFile(d / "history-9a79c6b" / "DialogSum_Data.zip", "w") as z:
        z.writestr("DialogSum_Data/dialogsum.train.jsonl", train + "\n")
    (d / "DialogSum_Data/dialogsum.dev.jsonl").write_text(json.dumps(
        {"fname": "dev_0", "dialogue": "#Person1#: Bye.", "summary": "They part.", "topic": "bye"}) + "\n")
    (d / "DialogSum_Data/dialogsum.test.jsonl").write_text(json.dumps(
        {"fname": "test_0", "dialogue": "#Person1#: Lunch?", "summary1": "Lunch plan.", "summary2": "Food.",
         "summary3": "Eat.", "topic1": "food"}) + "\n")


@pytest.fixture
def source(tmp_path, monkeypatch) -> Path:
    # The shipped knowledge-base split must not decide the fixture's documents.
    monkeypatch.setattr(medquad, "KB_SPLITS", tmp_path / "no-kb-splits.json")
    root = tmp_path / "src"
    for make in (_mts, _aci, _meqsum, _medquad, _pubmedqa, _dialogsum):
        make(root)
    return root


def _build(source: Path, out: Path, **kw) -> tuple[list[dict], dict]:
    records, notes = prepare_data.build(source, counter=WordCounter(), **kw)
    manifest = prepare_data.write(records, notes, out, "test", kw.get("limit"))
    return records, manifest


def _read(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


# --- tests ----------------------------------------------------------------------------

def test_build_writes_splits_and_manifest(source, tmp_path):
    records, manifest = _build(source, tmp_path / "v1")
    for split in ("train", "valid", "test"):
        rows = _read(tmp_path / "v1", split)
        assert rows and all(r["split"] == split for r in rows)
        for r in rows:
            assert r["messages"][-1] == {"role": "assistant", "content": r["reference"]}
            assert set(r) == {"id", "task", "source", "licence", "split", "messages", "reference", "meta"}
    assert manifest["version"] == "v1" and not manifest["limited"]
    assert manifest["counts"]["meqsum"]["test"]["question_summary"] == 100
    assert set(manifest["files"]) == {"train.jsonl", "valid.jsonl", "test.jsonl"}


def test_prompts_are_exactly_what_the_runtime_sends(source, tmp_path):
    records, _ = _build(source, tmp_path / "v1")
    by_source = {}
    for r in records:
        by_source.setdefault(r["source"], r)
    mts_rec, med = by_source["mts-dialog"], by_source["medquad"]
    inputs = mts_rec["meta"]["inputs"]
    assert mts_rec["messages"][:-1] == summary_messages(inputs["dialogue"], inputs["section"])
    assert "\r" not in inputs["dialogue"]
    assert med["messages"][:-1] == answer_messages(med["meta"]["inputs"]["question"])


def test_splits_are_deterministic(source, tmp_path):
    _, first = _build(source, tmp_path / "a")
    _, second = _build(source, tmp_path / "b")
    assert first["files"] == second["files"]
    assert medquad.medquad_split("0000001") == medquad.medquad_split("0000001")
    shares = [medquad.medquad_split(f"{i:07d}") for i in range(2000)]
    assert 0.75 < shares.count("train") / 2000 < 0.85
    pubmed = {r["meta"]["pmid"]: r["split"] for r in _read(tmp_path / "a", "train") if r["source"] == "pubmedqa"}
    assert len(pubmed) == 70 - 10 - 50


def test_mts_duplicates_removed_from_train(source, tmp_path):
    records, manifest = _build(source, tmp_path / "v1")
    train = [r for r in records if r["source"] == "mts-dialog" and r["split"] == "train"]
    originals = {r["meta"]["original_id"] for r in train}
    assert "4" not in originals and "5" not in originals  # in valid / test1 (case and spacing aside)
    assert "6" not in originals  # a near copy of test2 0
    assert {"0", "1", "2", "3"} <= originals
    choices = manifest["choices"]["mts-dialog"]
    assert sorted(choices["dropped_overlapping_inputs"]["train"]) == [f"mts-dialog/train/{i}" for i in (4, 5)]
    assert choices["dropped_near_copies"] == {"mts-dialog/train/6": "mts-dialog/test2/0"}
    # augmented: originals repeated in the augmented files are not added twice
    main = [r for r in train if "augmented" not in r["meta"]]
    aug = [r for r in train if "augmented" in r["meta"]]
    assert len(main) == 4 and len(aug) == 4  # one distinct back-translation per kept original
    tests = [r for r in records if r["source"] == "mts-dialog" and r["split"] == "test"]
    assert sorted(r["meta"]["suite"] for r in tests) == ["mts-test1", "mts-test1", "mts-test2"]


def test_no_test_input_in_training(source, tmp_path):
    records, _ = _build(source, tmp_path / "v1")
    hashes = {s: {r["meta"]["input_hash"] for r in records if r["split"] == s} for s in ("train", "valid", "test")}
    assert not hashes["test"] & (hashes["train"] | hashes["valid"])
    assert not hashes["valid"] & hashes["train"]
    leaked = [dict(records[0], split="test", id="x/test/1"), dict(records[0], split="train", id="x/train/1")]
    with pytest.raises(AssertionError, match="leak"):
        prepare_data.check_leakage(leaked)


def test_medquad_split_by_document(source, tmp_path):
    records, manifest = _build(source, tmp_path / "v1")
    med = [r for r in records if r["source"] == "medquad"]
    splits_of_doc = {}
    for r in med:
        splits_of_doc.setdefault(r["meta"]["document"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of_doc.values())
    for r in med:  # the fallback rule, on the <Document id> (or the file name: equal here)
        assert r["split"] == medquad.medquad_split(r["meta"]["document"].split("/", 1)[1])
    assert manifest["choices"]["medquad"]["skipped_empty_answers"] == 80


def test_medquad_uses_the_knowledge_base_split_when_present(source, tmp_path, monkeypatch):
    # two cancer.gov-style files sharing one id attribute: build_kb keys them by file name
    for stem in ("0000013_3", "0000013_3_1"):
        _medquad_doc(source / "medquad" / "1_CancerGov_QA" / f"{stem}.xml", "0000013_3", f"Cancer {stem}",
                     [("treatment", f"How to treat cancer {stem} ?", "Surgery.")])
    kb = tmp_path / "splits.json"
    kb.write_text(json.dumps({"method": "test", "documents": {
        "GHR/0000001": "test", "NIDDK/0000001": "valid", "CancerGov/0000013_3": "train", "CancerGov/0000013_3_1": "test"}}))
    monkeypatch.setattr(medquad, "KB_SPLITS", kb)
    pairs, _ = medquad.read_pairs(source)
    split_of = {p["doc_id"]: p["split"] for p in pairs}
    assert split_of["GHR/0000001"] == "test" and split_of["NIDDK/0000001"] == "valid"
    assert split_of["CancerGov/0000013_3"] == "train" and split_of["CancerGov/0000013_3_1"] == "test"
    assert split_of["GHR/0000002"] == medquad.medquad_split("0000002")  # not listed: the fallback rule


def test_medquad_sampling_caps_train_per_question_type(source, tmp_path):
    records, notes = prepare_data.build(source, counter=WordCounter(), medquad_train_per_type=5)
    train = [r for r in records if r["source"] == "medquad" and r["split"] == "train"]
    per_type = {}
    for r in train:
        per_type[r["meta"]["qtype"]] = per_type.get(r["meta"]["qtype"], 0) + 1
    assert per_type and max(per_type.values()) <= 5
    assert notes["medquad"]["max_per_question_type"]["train"] == 5


def test_dialogsum_only_on_request(source, tmp_path):
    records, manifest = _build(source, tmp_path / "default")
    assert not any(r["source"] == "dialogsum" for r in records)
    assert "WARNING" not in manifest and "CC BY-NC-SA 4.0" not in manifest["licences"].values()
    records, manifest = _build(source, tmp_path / "nc", with_dialogsum=True)
    ds = [r for r in records if r["source"] == "dialogsum"]
    assert len(ds) == 5 and all(r["licence"] == "CC BY-NC-SA 4.0" for r in ds)
    assert "NON-COMMERCIAL" in manifest["WARNING"]
    test = [r for r in ds if r["split"] == "test"][0]
    assert test["reference"] == "Lunch plan." and test["meta"]["references"] == ["Lunch plan.", "Food.", "Eat."]


def test_aci_budget_drops_long_train_examples_but_keeps_test(source, tmp_path):
    records, manifest = _build(source, tmp_path / "v1", aci_max_prompt_tokens=60)
    aci = [r for r in records if r["source"] == "aci-bench"]
    for r in aci:
        if r["split"] in ("train", "valid"):
            assert r["meta"]["prompt_tokens"] <= 60
    assert not any("D2N" in r["id"] and "02-aci" in r["id"] for r in aci if r["split"] == "train")
    assert any(r["meta"]["prompt_tokens"] > 60 for r in aci if r["split"] == "test")
    assert not any("EMPTY" in r["reference"] for r in aci)
    assert len(manifest["choices"]["aci-bench"]["dropped_over_budget"]) == 8  # 1 long visit x 4 divisions x 2 splits
    assert {r["meta"]["suite"] for r in aci if r["split"] == "test"} == {"aci-test1", "aci-test2", "aci-test3"}


def test_limit_caps_each_source_and_split(source, tmp_path):
    records, manifest = _build(source, tmp_path / "v1", limit=2)
    assert manifest["limited"]
    assert sum(r["source"] == "meqsum" and r["split"] == "train" for r in records) == 2


def test_missing_or_malformed_sources_are_named(source, tmp_path):
    (source / "medquad").rename(source / "MedQuAD")
    with pytest.raises(SystemExit, match=r"medquad: .*medquad/\*/\*\.xml not found \(the source folder holds .*MedQuAD"):
        prepare_data.build(source, counter=WordCounter())
    (source / "MedQuAD").rename(source / "medquad")
    broken = next((source / "medquad").glob("*/*.xml"))
    broken.write_text("<Document><Focus>unclosed")
    with pytest.raises(SystemExit, match=f"medquad: malformed data .*{broken.name}: not well-formed XML"):
        prepare_data.build(source, counter=WordCounter())

    valid = source / "mts-dialog/Main-Dataset/MTS-Dialog-ValidationSet.csv"
    valid.write_text(valid.read_text() + "9,CC\n")  # a row cut short
    with pytest.raises(SystemExit, match=r"mts-dialog: malformed data .*ValidationSet.csv:\d+: a row with fewer fields"):
        prepare_data.build(source, counter=WordCounter())
    _csv(valid, [{"ID": "0", "section": "CC", "section_text": "x", "dialogue": "y"}],
         fields=("ID", "section", "section_text", "dialogue"))
    with pytest.raises(SystemExit, match="ValidationSet.csv: no column section_header"):
        prepare_data.build(source, counter=WordCounter())


def test_truncate_at_sentence_boundary():
    text = "One two three. Four five six seven. Eight nine."
    assert medquad.truncate(text, 20) == text
    assert medquad.truncate(text, 7) == "One two three. Four five six seven."
    assert medquad.truncate(text, 5) == "One two three."
    assert medquad.truncate("A very long sentence without an end", 3) == "A very long"  # never mid-word
    assert medquad.truncate("Intro:\n- item one\n- item two", 4) == "Intro:\n- item one"
    assert medquad.clean_answer("Fever.  - cough  - rash\n   \n  Next.") == "Fever.\n- cough\n- rash\nNext."


@pytest.mark.skipif(not (SHARED / "mts-dialog").is_dir(), reason="the source data lives only on dev machines")
def test_real_mts_dialog():
    records, notes = mts.load(SHARED)
    counts = {}
    for r in records:
        key = r["meta"].get("suite") or r["split"]
        counts[key] = counts.get(key, 0) + 1
    assert counts["valid"] == 100 and counts["mts-test1"] == 200 and counts["mts-test2"] == 200
    main_train = [r for r in records if r["split"] == "train" and "augmented" not in r["meta"]]
    assert len(main_train) == 1201 - len(notes["dropped_overlapping_inputs"]["train"]) - len(notes["dropped_near_copies"])
    assert notes["dropped_near_copies"] == {"mts-dialog/train/104": "mts-dialog/test2/188",
                                            "mts-dialog/train/318": "mts-dialog/test1/96",
                                            "mts-dialog/train/543": "mts-dialog/test2/78"}
    # the documented pair (train/valid, train/test1) plus generic one-line allergy dialogues
    assert {"mts-dialog/train/56", "mts-dialog/train/926"} <= set(notes["dropped_overlapping_inputs"]["train"])
    prepare_data.check_leakage(records)


def test_a_validation_visit_over_the_budget_in_one_section_goes_whole(source, tmp_path):
    records, _ = _build(source, tmp_path / "all", aci_max_prompt_tokens=10**6)
    valid = [r for r in records if r["source"] == "aci-bench" and r["split"] == "valid"]
    longest = max(valid, key=lambda r: r["meta"]["prompt_tokens"])["id"].rsplit("/", 1)[0]
    sizes = sorted(r["meta"]["prompt_tokens"] for r in valid if r["id"].startswith(longest + "/"))
    assert sizes[0] < sizes[-1]  # section names differ in length: a budget between them splits the visit
    records, manifest = _build(source, tmp_path / "cut", aci_max_prompt_tokens=sizes[0])
    assert not any(r["id"].startswith(longest + "/") for r in records)  # not some of its sections
    assert any(r["source"] == "aci-bench" and r["split"] == "valid" for r in records)  # the other visits stay
