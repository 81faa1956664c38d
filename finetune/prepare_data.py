"""Build the fine-tuning data set: python -m finetune.prepare_data --source ../shared/data --out build/data/v1

Writes train/valid/test.jsonl and manifest.json. Every record's messages[:-1]
is exactly what the runtime sends (built by assistant.tasks or finetune.formats),
and messages[-1] is the reference. meta carries the raw inputs (so the
evaluator can call the runtime's task functions), input_hash (normalised
dialogue or question), prompt_tokens / target_tokens (SmolLM2 tokenizer) and,
for test records, the evaluation suite. The source data lives only on dev
machines and CI; users only ever get a trained adapter.

Choices (also written to the manifest):
- MTS-Dialog: augmented back-translations for train only; training dialogues
  that reappear in valid/test (whitespace and case ignored) are removed from train.
- ACI-Bench: one record per note division; train and valid records whose prompt
  exceeds --aci-max-prompt-tokens (SmolLM2 tokens) are dropped whole, never cut,
  since a cut transcript would teach notes with facts missing from the input.
  Test keeps every visit: the runtime splits long transcripts itself.
- MedQuAD: split by document, targets cut at a sentence boundary, train sampled
  per question type (see finetune/sources/medquad.py).
- MeQSum: 800/100/100 by a hash of the file name. PubMedQA: the official 500
  test ids; the other 500 split 450/50 by a hash of the PubMed id.
- Every source: an input found in a held-out split is removed from the
  training side (and valid from test), then check_leakage asserts it globally.
- DialogSum (non-commercial) only with --with-dialogsum.
- --limit N keeps the first N records per source, split and test suite.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

from assistant.paths import file_sha256
from .sources import aci, dialogsum, medquad, meqsum, mts, pubmedqa

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
ACI_MAX_PROMPT_TOKENS = 2048


@lru_cache(maxsize=1)
def load_tokenizer():
    """SmolLM2's tokenizer: from the dequantized-model cache when it exists,
    else straight from the embedded GGUF (a few seconds)."""
    from transformers import AutoTokenizer

    from assistant.backends.hf import dequantized_cache_dir
    from assistant.models import resolve

    spec = resolve("smollm2-135m-instruct")
    cached = dequantized_cache_dir(spec)
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    return AutoTokenizer.from_pretrained(spec.path.parent, gguf_file=spec.path.name)


class TokenCounter:
    """Counts tokens the way the model sees them: the chat-templated prompt, and the reference."""

    def __init__(self, tokenizer=None):
        self.tok = tokenizer or load_tokenizer()

    def _lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def prompts(self, message_lists: list[list[dict]]) -> list[int]:
        return self._lengths([self.tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                              for m in message_lists])

    def texts(self, texts: list[str]) -> list[int]:
        return self._lengths(texts)


def check_leakage(records: list[dict]) -> None:
    """No test input (dialogue or question, normalised) may be in train or valid,
    and no valid input in train, across all sources."""
    seen = {s: defaultdict(list) for s in SPLITS}
    for r in records:
        seen[r["split"]][r["meta"]["input_hash"]].append(r["id"])
    problems = []
    for held, others in (("test", ("train", "valid")), ("valid", ("train",))):
        for other in others:
            for h in seen[held].keys() & seen[other].keys():
                problems.append(f"{seen[held][h][0]} also in {other}: {seen[other][h][:3]}")
    if problems:
        raise AssertionError(f"{len(problems)} held-out inputs leak into training data:\n  "
                             + "\n  ".join(problems[:20]))


def _limit(records: list[dict], n: int | None) -> list[dict]:
    """The first n records per split (and per test suite), in a stable order."""
    if not n:
        return records
    taken: Counter = Counter()
    out = []
    for r in records:
        key = (r["split"], r["meta"].get("suite"))
        if taken[key] < n:
            taken[key] += 1
            out.append(r)
    return out


def build(source: Path, *, with_dialogsum: bool = False, limit: int | None = None,
          counter: TokenCounter | None = None, aci_max_prompt_tokens: int = ACI_MAX_PROMPT_TOKENS,
          medquad_train_per_type: int = medquad.TRAIN_PER_TYPE,
          medquad_eval_per_type: int = medquad.EVAL_PER_TYPE) -> tuple[list[dict], dict]:
    source = Path(source)
    counter = counter or TokenCounter()
    loaders = {
        "mts-dialog": lambda: mts.load(source),
        "aci-bench": lambda: aci.load(source),
        "meqsum": lambda: meqsum.load(source),
        "medquad": lambda: medquad.load(source, medquad_train_per_type, medquad_eval_per_type),
        "pubmedqa": lambda: pubmedqa.load(source),
    }
    if with_dialogsum:
        loaders["dialogsum"] = lambda: dialogsum.load(source)
    records, notes = [], {}
    for name, load in loaders.items():
        try:
            recs, notes[name] = load()
        except FileNotFoundError as exc:
            raise SystemExit(f"{name}: {exc.filename or exc} not found (the source folder holds "
                             f"{', '.join(sorted(p.name for p in source.iterdir())) if source.is_dir() else 'nothing'})"
                             ) from None
        except (KeyError, AttributeError, IndexError, ValueError, SyntaxError) as exc:  # ParseError is a SyntaxError
            raise SystemExit(f"{name}: malformed data under {source}: {type(exc).__name__}: {exc}") from None
        recs = _limit(recs, limit)
        prompt_lengths = counter.prompts([r["messages"][:-1] for r in recs])
        target_lengths = counter.texts([r["reference"] for r in recs])
        for r, p, t in zip(recs, prompt_lengths, target_lengths):
            r["meta"]["prompt_tokens"], r["meta"]["target_tokens"] = p, t
        if name == "aci-bench":
            over = [r["id"] for r in recs if r["split"] != "test" and r["meta"]["prompt_tokens"] > aci_max_prompt_tokens]
            # A validation visit is also scored whole (aci-visit-valid, against its sections
            # joined): it goes whole, or its note would be scored without a section.
            long_visits = {i.rsplit("/", 1)[0] for i in over if i.startswith("aci-bench/valid/")}
            over += [r["id"] for r in recs if r["id"] not in set(over) and r["id"].rsplit("/", 1)[0] in long_visits]
            recs = [r for r in recs if r["id"] not in set(over)]
            notes[name]["max_prompt_tokens"] = aci_max_prompt_tokens
            notes[name]["dropped_over_budget"] = over
        records.extend(recs)
    ids = Counter(r["id"] for r in records)
    if ids and max(ids.values()) > 1:
        raise SystemExit(f"duplicate record ids (a source row without its id field?): "
                         f"{[i for i, n in ids.items() if n > 1][:5]}")
    check_leakage(records)
    return records, notes


def write(records: list[dict], notes: dict, out: Path, command: str, limit: int | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in records:
                if r["split"] == split:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts: dict = defaultdict(lambda: defaultdict(Counter))
    tokens: dict = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        counts[r["source"]][r["split"]][r["task"]] += 1
        tokens[r["source"]][r["split"]]["prompt"] += r["meta"]["prompt_tokens"]
        tokens[r["source"]][r["split"]]["target"] += r["meta"]["target_tokens"]
    licences = sorted({(r["source"], r["licence"]) for r in records})
    manifest = {
        "version": out.name,
        "format_version": FORMAT_VERSION,
        "command": command,
        "limited": bool(limit),
        "limit_per_source_split": limit,
        "licences": dict(licences),
        "counts": json.loads(json.dumps(counts)),
        "tokens": json.loads(json.dumps(tokens)),
        "tokenizer": "SmolLM2-135M-Instruct (chat template, generation prompt included)",
        "files": {f"{s}.jsonl": file_sha256(out / f"{s}.jsonl") for s in SPLITS},
        "choices": notes,
    }
    nc = [s for s, lic in licences if "NC" in lic]
    if nc:
        manifest["WARNING"] = (f"NON-COMMERCIAL data included ({', '.join(nc)}: CC BY-NC-SA 4.0). "
                               "A model trained on this set must not be used or shipped commercially.")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, required=True, help="folder holding mts-dialog/, aci-bench/, ...")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--with-dialogsum", action="store_true", help="add DialogSum (CC BY-NC-SA: non-commercial)")
    p.add_argument("--limit", type=int, help="at most N records per source and split (quick runs)")
    p.add_argument("--aci-max-prompt-tokens", type=int, default=ACI_MAX_PROMPT_TOKENS)
    p.add_argument("--medquad-train-per-type", type=int, default=medquad.TRAIN_PER_TYPE)
    p.add_argument("--medquad-eval-per-type", type=int, default=medquad.EVAL_PER_TYPE)
    args = p.parse_args(argv)
    records, notes = build(args.source, with_dialogsum=args.with_dialogsum, limit=args.limit,
                           aci_max_prompt_tokens=args.aci_max_prompt_tokens,
                           medquad_train_per_type=args.medquad_train_per_type,
                           medquad_eval_per_type=args.medquad_eval_per_type)
    command = shlex.join(["python", "-m", "finetune.prepare_data", *(sys.argv[1:] if argv is None else argv)])
    manifest = write(records, notes, args.out, command, args.limit)
    for source, splits in manifest["counts"].items():
        tokens = manifest["tokens"][source]
        line = ", ".join(f"{s} {sum(splits[s].values())} ({tokens[s]['prompt'] + tokens[s]['target']:,} tok)"
                         for s in SPLITS if s in splits)
        print(f"{source:11} {line}")
    if "WARNING" in manifest:
        print(f"WARNING: {manifest['WARNING']}", file=sys.stderr)
    print(f"wrote {args.out}/{{train,valid,test}}.jsonl and manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
