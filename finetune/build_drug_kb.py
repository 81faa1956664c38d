"""Build the medicines part of the shipped library from FDA labels (dev machines and CI only).

    python -m finetune.build_drug_kb --labels ../shared/data/openfda-labels \
        --indications ../shared/data/fda-indications/labelProductIndication.md --out data/kb

Reads
- openFDA drug labels (public domain, CC0): a folder of the API's JSON answers (one
  `{"meta", "results": [label, ...]}` per file, as in ../shared/data/openfda-labels) and/or
  openFDA's bulk download as published (`drug-label-0001-of-00NN.json.zip`, the same JSON
  inside a zip): a clinic with internet builds the library of every label with
  `--labels path/to/the/zips`;
- the FDA indications table (`ProductNames|UNII|` then the indications text, entries
  separated by `---`), for the ~1,000 products with no full label here.

Writes
- drug_passages.jsonl.gz: a label cut into passages by section (the Medication Guide's
  patient-facing questions first, then the label's uses, dosage forms, dosage, warnings,
  side effects, interactions, pregnancy, overdose, storage), each capped in words so the
  shipped index stays small; title "Brand (generic): section", the names as aliases,
  DailyMed's URL of the label, source, licence;
- drug_names.json: every brand, generic and salt-free generic name -> the names it is
  known by, so "Lexapro" finds escitalopram and the other way round, and the names of
  drugs the library does not hold (MedlinePlus drug pages of MedQuAD, whose answers
  were removed upstream) so an answer can say which drug it has nothing on.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import zipfile
from collections import Counter
from pathlib import Path

from finetune.build_kb import chunk

LICENCE = "public domain (openFDA, CC0 1.0)"
# Label sections kept, in the order a patient needs them, with the section name the
# answer layer asks for and the most words kept of each: adverse-reaction and warning
# sections run to thousands of words of trial tables, whose opening summary is what a
# patient can use.
LABEL_SECTIONS = [
    ("boxed_warning", "important warning", 250),
    ("indications_and_usage", "uses", 300),
    ("dosage_forms_and_strengths", "dosage forms", 150),
    ("dosage_and_administration", "dosage", 300),
    ("contraindications", "who should not take", 200),
    ("warnings_and_cautions", "warnings", 400),
    ("warnings", "warnings", 400),
    ("adverse_reactions", "side effects", 300),
    ("drug_interactions", "interactions", 300),
    ("pregnancy", "pregnancy", 200),
    ("overdosage", "overdose", 150),
    ("storage_and_handling", "storage", 100),
    ("information_for_patients", "patient counseling", 300),
]
MEDGUIDE_WORDS = 1500
# The Medication Guide's own questions -> the section name the answer layer uses.
MEDGUIDE_QUESTIONS = [
    (r"most important information", "important warning"),
    (r"^what (?:is|are) (?!the)", "uses"),
    (r"who should not|do not take|before (?:taking|using|you take|you use|receiving)|should i tell", "who should not take"),
    (r"how should i (?:take|use)|how (?:do|to) (?:i )?(?:take|use)|dose", "dosage"),
    (r"should i avoid", "interactions"),
    (r"side effects", "side effects"),
    (r"store", "storage"),
    (r"general information", "information"),
    (r"ingredients", "ingredients"),
]
# Words that name a salt or a form, not the drug: "escitalopram oxalate" is escitalopram.
SALT_WORDS = frozenset(
    """hydrochloride hcl hydrobromide sulfate sulphate sodium potassium calcium magnesium oxalate maleate
    mesylate besylate tartrate bitartrate succinate fumarate citrate acetate phosphate gluconate lactate
    bromide chloride dihydrate monohydrate trihydrate anhydrous hyclate dipropionate propionate valerate
    disodium dipotassium extended release delayed er xr sr cr dr tablets tablet capsules capsule oral
    injection solution suspension usp topical ophthalmic inhalation otic nasal vaginal rectal transdermal
    urogenital""".split()
)
COMMON_WORDS = frozenset("for aqua usp all day one plus care relief cold flu sleep clear kit pack gel alcohol water oxygen".split())
_HEADING = re.compile(r"^\s*(?:\d+(?:\.\d+)*\s+)?(?:[A-Z][A-Z&/,()'\- ]{3,}?)(?=\s+[A-Z][a-z]|\s+•|\s*$)")
_QUESTION = re.compile(r"(?<=[.!?:)\s])\s*((?:What|Who|How|Can|Should|Do|Does|Is|Are)\b[^?]{3,160}\?)")


def norm_name(name: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def base_name(name: str) -> str:
    """'ESCITALOPRAM OXALATE' -> 'escitalopram'; a combination keeps each part's base."""
    words = [w for w in norm_name(name).split() if w not in SALT_WORDS]
    return " ".join(words)


def display_name(name: str) -> str:
    """FDA writes generics in capitals: 'ESCITALOPRAM OXALATE' -> 'escitalopram oxalate'."""
    return name.lower() if name.isupper() else name


def clean(text: str) -> str:
    text = text.replace("\u00ae", "").replace("\u2122", "")
    return " ".join(text.split())


def strip_heading(text: str) -> str:
    """'1 INDICATIONS AND USAGE Lexapro is indicated ...' -> 'Lexapro is indicated ...'."""
    return _HEADING.sub("", text, count=1).strip()


def cap_words(text: str, limit: int) -> str:
    words = text.split()
    if len(words) <= limit:
        return text
    cut = " ".join(words[:limit])
    end = max(cut.rfind(". "), cut.rfind("? "))  # end on a sentence where one ends late enough
    return cut[: end + 1] if end > len(cut) // 2 else cut + " ..."


def medguide_sections(text: str) -> list[tuple[str, str]]:
    """The Medication Guide split at its own questions: [(section, 'question answer'), ...]."""
    text = clean(text)
    marks = list(_QUESTION.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start(1) if i + 1 < len(marks) else len(text)
        question, body = m.group(1), text[m.end(1):end].strip()
        if len(body.split()) < 8:
            continue
        section = next((name for cue, name in MEDGUIDE_QUESTIONS if re.search(cue, question, re.IGNORECASE)), None)
        if section:
            out.append((section, f"{question} {body}"))
    return out


def read_label_files(folder: Path) -> list[tuple[str, dict]]:
    """(file name, label) for every label in a folder of openFDA JSON answers and/or
    bulk-download zips. A file that is not such an answer is named, not skipped silently."""
    labels = []
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".json", ".zip"))
    for path in paths:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                for member in sorted(n for n in zf.namelist() if n.lower().endswith(".json")):
                    with zf.open(member) as f:
                        doc = json.load(io.TextIOWrapper(f, encoding="utf-8"))
                    labels.extend((f"{path.name}:{member}", r) for r in doc.get("results", []))
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or "results" not in doc:
            if path.name == "timestamp.json":  # the snapshot's own bookkeeping
                continue
            raise SystemExit(f"{path}: not an openFDA drug-label answer (no 'results' list)")
        labels.extend((path.name, r) for r in doc["results"])
    return labels


def label_names(label: dict) -> tuple[list[str], list[str]]:
    of = label.get("openfda") or {}
    brands = [b for b in dict.fromkeys(clean(b) for b in of.get("brand_name", [])) if b]
    generics = [g for g in dict.fromkeys(clean(g) for g in of.get("generic_name", [])) if g]
    return brands, generics


def focus_of(brands: list[str], generics: list[str]) -> str:
    generic = display_name(generics[0]) if generics else ""
    brand = next((b for b in brands if base_name(b) != base_name(generic)), "")
    if brand and generic:
        return f"{brand} ({generic})"
    return brand or generic


def label_passages(label: dict, focus: str, aliases: list[str], doc_id: str, url: str) -> list[dict]:
    out = []
    if label.get("spl_medguide"):
        kept = 0
        for section, text in medguide_sections(" ".join(label["spl_medguide"])):
            text = cap_words(text, max(60, min(400, MEDGUIDE_WORDS - kept)))
            kept += len(text.split())
            out.extend((section, t, "Medication Guide") for t in chunk(text))
            if kept >= MEDGUIDE_WORDS:
                break
    for field, section, limit in LABEL_SECTIONS:
        if not label.get(field):
            continue
        text = strip_heading(clean(" ".join(label[field])))
        if len(text.split()) < 5:
            continue
        out.extend((section, t, "label") for t in chunk(cap_words(text, limit)))
    return [{"doc_id": doc_id, "source": f"openFDA {part}", "url": url, "focus": focus, "qtype": section,
             "title": f"{focus}: {section}", "aliases": aliases, "names": aliases, "licence": LICENCE, "text": text}
            for section, text, part in out]


def read_indications(path: Path) -> list[dict]:
    """Entries of the FDA indications table: {"names": [...], "generic": str, "text": str}."""
    body = path.read_text(encoding="utf-8")
    start = body.find("ProductNames|UNII|IndicationsSummary")
    if start < 0:
        raise SystemExit(f"{path}: no 'ProductNames|UNII|IndicationsSummary' header")
    entries = []
    for block in body[start:].split("\n---"):
        lines = [ln for ln in block.strip().splitlines() if ln.strip()]
        if lines and lines[0].startswith("ProductNames|"):
            lines = lines[1:]
        if not lines or "|" not in lines[0]:
            continue
        names = [clean(n) for n in lines[0].split("|")[0].split(",") if clean(n)]
        heading = next((ln for ln in lines[1:] if ln.startswith("# ")), "")
        generic = re.sub(r"^#\s*|\s*Summary\s*$", "", heading).strip() or (names[-1] if names else "")
        text = clean(" ".join(ln for ln in lines[1:] if not ln.startswith("# ")))
        if names and len(text.split()) >= 5:
            entries.append({"names": names, "generic": generic, "text": text})
    return entries


def medquad_drug_names(medquad: Path) -> list[dict]:
    """MedlinePlus drug pages named in MedQuAD (answers removed upstream): names only."""
    folder = medquad / "11_MPlusDrugs_QA"
    out = []
    if not folder.is_dir():
        return out
    for xml in sorted(folder.glob("*.xml")):
        head = xml.read_text(encoding="utf-8", errors="replace")[:2000]
        m = re.search(r"<Focus>(.*?)</Focus>", head, re.DOTALL)
        if m and m.group(1).strip():
            out.append({"name": " ".join(m.group(1).split())})
    return out


def build(labels_dir: Path | None, indications: Path | None, medquad: Path | None, out: Path) -> dict:
    stats: Counter = Counter()
    records: list[dict] = []
    names: dict[str, set[str]] = {}
    held: set[str] = set()  # base names the library has passages for

    def link(all_names: list[str]) -> None:
        keys = {norm_name(n) for n in all_names} | {base_name(n) for n in all_names}
        # "For", "Aqua", "USP": product names that are everyday words would expand every question.
        keys = {k for k in keys if len(k) >= 3 and k not in COMMON_WORDS}
        for k in keys:
            names.setdefault(k, set()).update(keys - {k})

    if labels_dir:
        for file_name, label in read_label_files(labels_dir):
            brands, generics = label_names(label)
            focus = focus_of(brands, generics)
            if not focus:
                stats["labels_without_names"] += 1
                continue
            set_id = label.get("set_id", "")
            url = f"https://dailymed.nlm.nih.gov/dailymed/drugInfo.cfm?setid={set_id}" if set_id else ""
            aliases = list(dict.fromkeys([*brands, *(display_name(g) for g in generics),
                                          *(base_name(g) for g in generics)]))
            doc_id = f"openFDA/{Path(file_name).stem}"
            passages = label_passages(label, focus, aliases, doc_id, url)
            if not passages:
                continue
            stats["labels"] += 1
            records.extend(passages)
            link(aliases)
            held.update(base_name(a) for a in aliases)
    if indications:
        for entry in read_indications(indications):
            generic = entry["generic"]
            aliases = list(dict.fromkeys([*entry["names"], generic, base_name(generic)]))
            link(aliases)
            if any(base_name(a) in held for a in aliases):  # the full label is there already
                stats["indications_with_full_label"] += 1
                continue
            brands = [n for n in entry["names"] if base_name(n) != base_name(generic)]
            focus = f"{brands[0]} ({display_name(generic)})" if brands else display_name(generic)
            query = re.sub(r"\s+", "+", base_name(generic))
            url = f"https://dailymed.nlm.nih.gov/dailymed/search.cfm?labeltype=all&query={query}"
            stats["indication_products"] += 1
            for text in chunk(cap_words(entry["text"], 300)):
                records.append({"doc_id": f"FDA-indications/{norm_name(generic).replace(' ', '-')}",
                                "source": "FDA label indications", "url": url, "focus": focus, "qtype": "uses",
                                "title": f"{focus}: uses", "aliases": aliases, "names": aliases, "licence": LICENCE,
                                "text": text})
            held.update(base_name(a) for a in aliases)
    not_held = []
    if medquad:
        for entry in medquad_drug_names(medquad):
            key = base_name(entry["name"])
            if key and key not in held and key not in COMMON_WORDS:
                not_held.append((key, entry["name"]))
    for i, r in enumerate(records):
        r["id"] = i
    stats["passages"] = len(records)
    stats["names"] = len(names)
    stats["names_not_held"] = len(not_held)
    words = sorted(len(r["text"].split()) for r in records) or [0]
    stats["passage_words_median"] = words[len(words) // 2]
    stats["words_total"] = sum(words)

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "drug_passages.jsonl.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        for r in records:  # mtime=0 and a fixed order keep the file (and its hash) reproducible
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    (out / "drug_names.json").write_text(json.dumps({
        "about": "brand, generic and salt-free names -> the other names of the same drug (FDA labels and the "
                 "FDA indications table); held: names the library has text on; not_held: salt-free name -> "
                 "MedlinePlus's name of the drugs it names that the library has no text on",
        "names": {k: sorted(v) for k, v in sorted(names.items())},
        "held": sorted(held),
        "not_held": dict(sorted(not_held)),
    }, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return dict(stats)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, default=Path("../shared/data/openfda-labels"),
                    help="folder of openFDA drug-label JSON files or bulk-download zips")
    ap.add_argument("--indications", type=Path, default=Path("../shared/data/fda-indications/labelProductIndication.md"))
    ap.add_argument("--medquad", type=Path, default=Path("../shared/data/medquad"),
                    help="MedQuAD, for the names of drugs the library does not hold")
    ap.add_argument("--out", type=Path, default=Path("data/kb"))
    args = ap.parse_args(argv)
    for p in (args.labels, args.indications):
        if p and not p.exists():
            raise SystemExit(f"{p}: not found")
    print(json.dumps(build(args.labels, args.indications, args.medquad, args.out), indent=2))


if __name__ == "__main__":
    main()
