"""Evaluate a model (optionally with a LoRA adapter) through the runtime's own task layer.

    python -m finetune.evaluate --model smollm2-135m-instruct --suites mts-test1 \
        --data build/data/v1 --limit 20 --out runs/eval/base.json
    python -m finetune.evaluate plot runs/eval/*.json --out finetune/eval.png

Generation suites read test.jsonl (`mts-valid`, `aci-valid`, `aci-visit-valid`: valid.jsonl) and decode as
the app does (a summary of an MTS-Dialog section is the best of nine drafts, the rest is
greedy) through `load_backend` and `assistant.tasks` (or the finetune.formats builders),
so what is scored is what a user would get, up to one setting: replies stop at --max-tokens,
200 by default as in the reference baseline, where the app allows 256 tokens for a summary and
384 for an answer (long whole-visit notes are then scored cut). `ppl` scores valid.jsonl with the transformers model:
the NLL of the reference tokens only. Results go to --out (metrics), a sibling
.predictions.jsonl (one line per example) and summary.md next to --out, or --summary
(one row per label).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from assistant import faithfulness, tasks
from assistant.backends import load_backend
from assistant.backends.base import Backend, GenerationOptions, GenerationStats, Message

from . import formats, metrics
from .jsonl import read_jsonl

# "medquad" answers the way the app does (triage, retrieval, grounded prompt, sources);
# "medquad-ungrounded" asks the model the bare question, for comparison.
GENERATION_SUITES = ("mts-test1", "mts-test2", "aci", "meqsum", "medquad", "medquad-ungrounded",
                     "pubmedqa", "dialogsum", "mts-valid", "aci-valid", "aci-visit", "aci-visit-valid")
# Suites on valid.jsonl: where decoding settings and checkpoints are chosen, never on a test split.
VALID_SUITES = ("mts-valid", "aci-valid", "aci-visit-valid")
# Whole visits: an ACI-Bench transcript summarized with no section asked for, as the app's
# Summarize mode does, scored against the visit's full note (its sections joined in order).
VISIT_SUITES = {"aci-visit": "aci", "aci-visit-valid": "aci-valid"}
# Suites whose summaries are of MTS-Dialog sections, which get several drafts by default.
MTS_SUITES = ("mts-test1", "mts-test2", "mts-valid")
SUITES = GENERATION_SUITES + ("ppl",)
PROMPT_STYLES = ("runtime", "baseline")
# The prompt of the reference baseline (R1 13.9 / R2 4.1 / RL 11.1 on test1): raw section
# code, no system prompt, so the chat template's default system prompt applies.
BASELINE_PROMPT = "Summarize the following doctor-patient conversation as the '{section}' section of a clinical note.\n\n{dialogue}"


def suite_of(record: dict) -> str | None:
    source, suite = record["source"], record["meta"].get("suite")
    if source == "mts-dialog":
        return "mts-valid" if record.get("split") == "valid" else suite
    if source == "aci-bench":
        return "aci-valid" if record.get("split") == "valid" else "aci"
    return source


def spread(records: Sequence[dict], limit: int | None) -> list[dict]:
    """`limit` records spread over the whole suite, in file order: those whose ids hash
    lowest. The files are grouped (ACI-Bench by section, MedQuAD by question type), so
    the first N would be one section or a few question types; the same N come back on
    every run and on every machine."""
    if not limit or len(records) <= limit:
        return list(records)
    rank = sorted(range(len(records)), key=lambda i: hashlib.sha256(records[i]["id"].encode()).hexdigest())
    keep = set(rank[:limit])
    return [r for i, r in enumerate(records) if i in keep]


def select(records: Sequence[dict], suite: str, limit: int | None) -> list[dict]:
    suite = suite.removesuffix("-ungrounded")
    if suite in VISIT_SUITES:
        chosen = visits(r for r in records if suite_of(r) == VISIT_SUITES[suite])
    else:
        chosen = [r for r in records if suite_of(r) == suite]
    return spread(chosen, limit)


def visits(section_records: Iterable[dict]) -> list[dict]:
    """One record per visit from the records of its note's sections (ids VISIT/SECTION):
    the transcript with no section, and the sections' references joined as the full note."""
    by_visit: dict[str, dict] = {}
    for r in section_records:
        visit_id = r["id"].rsplit("/", 1)[0]
        visit = by_visit.get(visit_id)
        if visit is None:
            inputs = {"dialogue": r["meta"]["inputs"]["dialogue"], "section": None}
            visit = by_visit[visit_id] = {**r, "id": visit_id, "reference": [],
                                          "meta": {**r["meta"], "inputs": inputs, "section": None}}
        elif visit["meta"]["inputs"]["dialogue"] != r["meta"]["inputs"]["dialogue"]:
            raise ValueError(f"{r['id']}: not the transcript of the other sections of {visit_id}")
        visit["reference"].append(r["reference"])
    return [{**v, "reference": "\n\n".join(v["reference"])} for v in by_visit.values()]


class StatsRecorder(Backend):
    """Passes everything to the real backend and keeps the stats of every call:
    a chunked summary makes several calls, and decode speed should count them all."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name, self.model_name = inner.name, inner.model_name
        self.calls: list[GenerationStats] = []

    @property
    def context_length(self) -> int:
        return self.inner.context_length

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.prompt_tokens(messages)

    def stream(self, messages, options=None, cancel=None) -> Iterator[str]:
        try:
            yield from self.inner.stream(messages, options, cancel)
        finally:
            self.last_stats = self.inner.last_stats
            if self.last_stats is not None:
                self.calls.append(self.last_stats)

    def decode_tokens_per_s(self) -> float | None:
        tokens = sum(max(0, s.completion_tokens - 1) for s in self.calls)
        seconds = sum(s.total_s - (s.ttft_s or 0.0) for s in self.calls if s.completion_tokens > 1)
        return tokens / seconds if seconds > 0 else None


def _stream(backend: Backend, messages: list[Message], opts: GenerationOptions) -> str:
    return "".join(backend.stream(messages, opts)).strip()


@dataclass(frozen=True)
class SummaryDecoding:
    """How summaries are decoded: the app's settings unless a sweep overrides one.
    Sweeps (repeat penalty, drafts) are run on validation suites only."""
    repeat_penalty: float | None = None  # None: tasks.SUMMARY_REPEAT_PENALTY
    best_of: int | None = None  # None: the app's default for each section (tasks.summary_drafts)


def generate(backend: Backend, record: dict, style: str, opts: GenerationOptions,
             suite: str = "", summary: SummaryDecoding = SummaryDecoding()) -> tuple[str, dict]:
    """The model's output for one record, produced the way the app would produce it,
    with what else the app reports (the sources an answer cites)."""
    inputs = record["meta"]["inputs"]
    if record["task"] == "summarize" and record["source"] != "dialogsum":
        if style == "baseline":
            prompt = BASELINE_PROMPT.format(section=inputs["section"], dialogue=inputs["dialogue"].strip())
            return _stream(backend, [{"role": "user", "content": prompt}], opts), {}
        # The app's decoding settings; a value given here is how the app's default is chosen.
        opts = tasks.summary_options(max_tokens=opts.max_tokens, repeat_penalty=summary.repeat_penalty)
        result = tasks.summarize(backend, inputs["dialogue"], inputs["section"], options=opts,
                                 best_of=summary.best_of)
        # the task's reason: the chosen draft's, or "length" when any part of a chunked transcript was cut
        return result.text, {"finish_reason": result.stats.finish_reason,
                             **({"chosen_draft": result.meta["chosen"]} if "chosen" in result.meta else {}),
                             **({"unchecked": result.meta["unchecked"]} if "unchecked" in result.meta else {}),
                             **({"removed": len(result.meta["faithfulness"]["removed"])}
                                if "faithfulness" in result.meta else {})}
    if record["task"] == "answer":
        grounded = suite != "medquad-ungrounded"
        result = tasks.answer(backend, inputs["question"], options=opts, grounded=grounded, safety=grounded)
        return result.text, {"finish_reason": result.stats.finish_reason, "sources": result.meta["sources"],
                             "gold_url": record["meta"].get("url"), "answered_by": result.model}
    builders = {
        "question_summary": lambda: formats.question_summary_messages(inputs["question"]),
        "pubmedqa": lambda: formats.pubmedqa_messages(inputs["question"], inputs["contexts"]),
        "summarize": lambda: formats.dialogsum_messages(inputs["dialogue"]),  # dialogsum
    }
    return _stream(backend, builders[record["task"]](), opts), {}


def score_suite(suite: str, rows: list[dict]) -> dict:
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    out = {"n": len(rows), **{k: round(v, 2) for k, v in metrics.rouge(preds, refs).items()}}
    if suite == "pubmedqa":
        labels = [metrics.pubmedqa_label(p) for p in preds]
        out["accuracy"] = round(metrics.accuracy(labels, [r["label"] for r in rows]), 2)
        out["predicted_labels"] = dict(Counter(labels))
    if suite == "medquad":
        cited = [s["url"] == r["gold_url"] for r in rows for s in r.get("sources", [])]
        out["citation_precision"] = round(100 * sum(cited) / len(cited), 1) if cited else None
        out["answered_with_sources"] = sum(bool(r.get("sources")) for r in rows)
        out["fixed_replies"] = dict(Counter(r["answered_by"] for r in rows if r["answered_by"] in
                                            ("knowledge-base", "triage")))
    if any("unchecked" in r for r in rows):
        out["unchecked"] = {k: round(v, 2) for k, v in
                            metrics.rouge([r.get("unchecked", r["prediction"]) for r in rows], refs).items()}
        out["unsupported"] = {"before": metrics.unsupported_counts([r.get("unsupported_before", []) for r in rows]),
                              "after": metrics.unsupported_counts([r.get("unsupported_after", []) for r in rows])}
    if rows and "seconds" in rows[0]:
        out["seconds_per_record"] = round(sum(r["seconds"] for r in rows) / len(rows), 1)
    tokens = [r["completion_tokens"] for r in rows]
    out["mean_completion_tokens"] = round(sum(tokens) / len(tokens), 1) if tokens else 0
    out["hit_max_tokens"] = sum(r["finish_reason"] == "length" for r in rows)
    return out


def run_generation(backend: StatsRecorder, suite: str, records: list[dict], style: str,
                   max_tokens: int, predictions, summary: SummaryDecoding = SummaryDecoding()) -> dict:
    opts = GenerationOptions(max_tokens=max_tokens, temperature=0.0)
    rows = []
    for i, record in enumerate(records, 1):
        before = len(backend.calls)
        started = time.perf_counter()
        text, extra = generate(backend, record, style, opts, suite, summary)
        seconds = time.perf_counter() - started
        calls = backend.calls[before:]
        if "unchecked" in extra:
            # what a summary states that its transcript does not, as drafted and as returned
            source = record["meta"]["inputs"]["dialogue"]
            extra["unsupported_before"] = sorted(faithfulness.check(extra["unchecked"], source).categories())
            extra["unsupported_after"] = sorted(faithfulness.check(text, source).categories())
        finish_reason = extra.pop("finish_reason", calls[-1].finish_reason if calls else None)
        row = {
            "suite": suite, "id": record["id"], "prediction": text, "reference": record["reference"],
            "completion_tokens": sum(s.completion_tokens for s in calls), "calls": len(calls),
            "finish_reason": finish_reason, "seconds": round(seconds, 2),
            **({"label": record["meta"]["label"]} if suite == "pubmedqa" else {}),
            "rouge": {k: round(v, 2) for k, v in metrics.rouge_one(text, record["reference"]).items()},
            **extra,
        }
        rows.append(row)
        predictions.write(json.dumps(row, ensure_ascii=False) + "\n")
        predictions.flush()
        if i % 10 == 0 or i == len(records):
            r1 = sum(r["rouge"]["rouge1"] for r in rows) / len(rows)
            print(f"  {suite}: {i}/{len(records)}  R1 so far {r1:.1f}", file=sys.stderr, flush=True)
    return score_suite(suite, rows)


def score_predictions(path: Path) -> dict[str, dict]:
    """Each suite's scores from a predictions file, as `run_generation` reports them: a run
    stopped part-way (on a slow machine) is scored on the records it finished."""
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            by_suite[row["suite"]].append(row)
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{line_no}: not a prediction row ({exc})") from None
    return {suite: score_suite(suite, rows) for suite, rows in by_suite.items()}


def run_perplexity(spec, backend: Backend | None, records: list[dict], limit: int | None) -> dict:
    """Per source (`limit` records of each, spread as `spread` does) and overall, on valid.jsonl."""
    if backend is not None and backend.name == "transformers":
        model, tokenizer = backend.model, backend.tokenizer
    else:
        from assistant.backends.hf import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(spec)
    by_source = defaultdict(list)
    for r in records:
        by_source[r["source"]].append(r)
    by_source = {source: spread(recs, limit) for source, recs in by_source.items()}
    out, total_nll, total_tokens = {}, 0.0, 0
    for source, recs in by_source.items():
        out[source] = metrics.perplexity(model, tokenizer, recs)
        total_nll += out[source]["nll"] * out[source]["tokens"]
        total_tokens += out[source]["tokens"]
        print(f"  ppl {source}: {out[source]['ppl']:.2f} over {out[source]['tokens']} tokens", file=sys.stderr)
    mean = total_nll / total_tokens if total_tokens else float("nan")
    return {"nll": round(mean, 4), "ppl": round(math.exp(mean), 3) if total_tokens else None,
            "tokens": total_tokens, "by_source": out}


def machine(backend_name: str | None) -> dict:
    """What ran the evaluation. llama.cpp's arithmetic follows the CPU's vector extensions
    (an occasional greedy token flips, and sampled drafts then diverge), so a figure is only
    comparable with one from the same CPU features: the result records them."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cpus": os.cpu_count()}
    if backend_name == "llama.cpp":
        import llama_cpp

        raw = llama_cpp.llama_print_system_info()
        info["llama_cpp_features"] = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip(" |")
    return info


def size_on_disk(spec) -> dict:
    def total(path: Path | None) -> int | None:
        if path is None or not path.exists():
            return None
        return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    return {"model_bytes": total(spec.path), "adapter_bytes": total(spec.adapter)}


# --- summary table and plot ---------------------------------------------------

_COLUMNS = ["label", "model", "backend", "prompt", "limit", "MTS-1 R1/R2/RL", "MTS-2 R1/R2/RL", "ACI R1/R2/RL",
            "ACI visit R1/R2/RL", "MeQSum R1/R2/RL", "MedQuAD R1/R2/RL", "PubMedQA acc", "valid PPL", "decode tok/s", "size MB"]


def adapter_name(adapter: str | Path) -> str:
    """A name for an adapter directory: a training run's `runs/NAME/final` is NAME."""
    path = Path(adapter)
    return path.parent.name if path.name == "final" and path.parent.name else path.name


def model_label(model: str, adapter: str | None) -> str:
    """A short name for a model and its adapter, as a run's label and a plot's bar group use it."""
    return Path(model).name + (f"+{adapter_name(adapter)}" if adapter else "")


def summary_row(result: dict) -> list[str]:
    s = result["suites"]

    def rouge(name: str) -> str:
        m = s.get(name)
        return f"{m['rouge1']:.1f} / {m['rouge2']:.1f} / {m['rougeL']:.1f}" if m else "-"

    def num(value, fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    size = result["size"]["model_bytes"]
    return [
        result["label"], result["model"] + (f" + {adapter_name(result['adapter'])}" if result.get("adapter") else ""),
        result["backend"], result["prompt_style"], str(result["limit"] or "full"),
        rouge("mts-test1"), rouge("mts-test2"), rouge("aci"), rouge("aci-visit"), rouge("meqsum"), rouge("medquad"),
        num(s.get("pubmedqa", {}).get("accuracy"), ".1f"), num(s.get("ppl", {}).get("ppl"), ".2f"),
        num(result.get("decode_tokens_per_s"), ".0f"), num(size / 1e6 if size else None, ".0f"),
    ]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def update_summary(path: Path, result: dict) -> None:
    """One row per label. A rerun of a label fills in the suites it ran and keeps the
    figures of suites run under that label by other invocations (the suites of one model
    are often run separately); a new label appends a row. Rows written under other columns
    (an older table) are carried over by column name; lines outside the table are kept."""
    rows: dict[str, dict[str, str]] = {}
    before, after = [], []
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        start = next((i for i, line in enumerate(lines) if _cells(line)[0] == "label"), None)
        if start is None:
            before = lines
        else:
            old_columns = _cells(lines[start])
            before, end = lines[:start], start + 2
            while end < len(lines) and lines[end].startswith("|"):
                cells = _cells(lines[end])
                rows[cells[0]] = dict(zip(old_columns, cells))
                end += 1
            after = lines[end:]
    new = dict(zip(_COLUMNS, summary_row(result)))
    old = rows.get(result["label"], {})
    rows[result["label"]] = {c: new[c] if new[c] != "-" or c not in old else old[c] for c in _COLUMNS}
    table = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS),
             *("| " + " | ".join(row.get(c, "-") for c in _COLUMNS) + " |" for row in rows.values())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*before, *table, *after]) + "\n", encoding="utf-8")


PLOT_METRICS = [  # (bar name, suite, metric)
    ("MTS-1 R1", "mts-test1", "rouge1"), ("MTS-1 RL", "mts-test1", "rougeL"), ("MTS-2 R1", "mts-test2", "rouge1"),
    ("ACI R1", "aci", "rouge1"), ("ACI visit R1", "aci-visit", "rouge1"), ("MeQSum R1", "meqsum", "rouge1"), ("MedQuAD R1", "medquad", "rouge1"),
    ("PubMedQA acc", "pubmedqa", "accuracy"), ("DialogSum R1", "dialogsum", "rouge1"),
]


def merge_by_model(results: list[dict], names: Sequence[str] | None = None) -> list[dict]:
    """One entry per model (and adapter): suites run in separate invocations become one bar
    group. A suite two runs of one model both hold is taken from the later one, with a warning
    naming both (they may differ in prompt, limit or decoding)."""
    names = names or [f"run {i + 1}" for i in range(len(results))]
    merged: dict[tuple, dict] = {}
    given_by: dict[tuple, str] = {}
    for r, name in zip(results, names):
        key = (r["model"], r.get("adapter"))
        m = merged.setdefault(key, {"label": model_label(r["model"], r.get("adapter")), "suites": {},
                                    "decode_tokens_per_s": None})
        for suite in r["suites"]:
            if (key, suite) in given_by:
                print(f"warning: {suite} of {m['label']} is in both {given_by[key, suite]} and {name}; "
                      f"the figures of {name} are plotted", file=sys.stderr)
            given_by[key, suite] = name
        m["suites"].update(r["suites"])
        m["decode_tokens_per_s"] = m["decode_tokens_per_s"] or r.get("decode_tokens_per_s")
    return list(merged.values())


def read_results(paths: Sequence[Path]) -> list[dict]:
    """The result JSONs to plot; anything else is named, not skipped in silence."""
    results = []
    for path in paths:
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: not a result of finetune.evaluate ({exc})") from None
        if not (isinstance(result, dict) and isinstance(result.get("suites"), dict) and "model" in result):
            raise SystemExit(f"{path}: not a result of finetune.evaluate (no model and suites; "
                             "the .predictions.jsonl beside a result is not one either)")
        results.append(result)
    return results


def bar_values(results: list[dict]) -> tuple[list[tuple], list[list[float]]]:
    """The metrics some run has, and each run's value of them: NaN (no bar) where a run lacks
    one, so a suite that was not run never reads as a score of 0."""
    quality = [m for m in PLOT_METRICS if any(m[1] in r["suites"] for r in results)]
    return quality, [[r["suites"].get(suite, {}).get(key, math.nan) for _, suite, key in quality] for r in results]


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality, values_by_run = bar_values(results)
    fig, (ax, ax_speed) = plt.subplots(1, 2, figsize=(4 + 1.2 * len(quality), 4.5),
                                       gridspec_kw={"width_ratios": [max(1, len(quality)), 1]})
    width = 0.8 / max(1, len(results))
    for i, (r, values) in enumerate(zip(results, values_by_run)):
        ax.bar([x + i * width for x in range(len(quality))], values, width, label=r["label"])
        ax_speed.bar(i, r.get("decode_tokens_per_s") or math.nan, label=r["label"])
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(quality))])
    ax.set_xticklabels([q[0] for q in quality], rotation=30, ha="right")
    ax.set_ylabel("ROUGE F1 x100 / accuracy %")
    ax.legend(fontsize="small")
    ax_speed.set_xticks(range(len(results)))
    ax_speed.set_xticklabels([r["label"] for r in results], rotation=30, ha="right")
    ax_speed.set_ylabel("decode tokens/s")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


# --- command line ---------------------------------------------------------------

def _thread_options(spec, args) -> dict:
    """On a shared 2-core machine one thread can beat two that keep waiting for each other."""
    if not getattr(args, "threads", None):
        return {}
    chosen = args.backend or ("llama.cpp" if spec.kind == "gguf" and spec.adapter is None else "transformers")
    if chosen == "llama.cpp":
        return {"n_threads": args.threads}
    import torch

    torch.set_num_threads(args.threads)
    return {}


def evaluate(args, backend: Backend | None = None) -> dict:
    """Run the suites and write the outputs. `backend` lets tests pass a fake."""
    from assistant.models import resolve

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    if args.prompt_style == "baseline" and set(suites) & set(VISIT_SUITES):
        raise SystemExit("the baseline prompt names a section, and whole visits have none: "
                         f"run {', '.join(sorted(set(suites) & set(VISIT_SUITES)))} with --prompt-style runtime")
    data = Path(args.data)
    spec = None if backend is not None else resolve(args.model, adapter=args.adapter)
    style_tag = "" if args.prompt_style == "runtime" else f"-{args.prompt_style}"
    # Settings away from the defaults are in the label, so that runs of one model with other
    # settings get rows of their own in summary.md rather than filling in each other's.
    label = args.label or (model_label(args.model, args.adapter) + style_tag + (f"-limit{args.limit}" if args.limit else "")
                           + (f"-best{args.best_of}" if args.best_of and args.prompt_style != "baseline" else "")
                           + (f"-rp{args.repeat_penalty:g}" if args.repeat_penalty is not None else "")
                           + (f"-max{args.max_tokens}" if args.max_tokens != 200 else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    gen = [s for s in suites if s != "ppl"]
    selected = _select_suites(data, suites, args.limit)
    inner = backend
    if gen and inner is None:
        t0 = time.perf_counter()
        inner = load_backend(spec, backend=args.backend, **_thread_options(spec, args))
        print(f"loaded {inner.model_name} on {inner.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    recorder = StatsRecorder(inner) if inner is not None else None
    # The baseline prompt is the raw model's, one greedy draft.
    best_of = 1 if args.prompt_style == "baseline" else args.best_of
    summary = SummaryDecoding(repeat_penalty=args.repeat_penalty, best_of=best_of)
    results: dict[str, dict] = {}
    # Predictions are written as they come (to follow a long run) into a side file that takes
    # the place of the last run's only when this one ends: a run stopped half-way never leaves
    # the last complete run's metrics pointing at half a file.
    predictions_path = out.with_suffix(".predictions.jsonl")
    partial = predictions_path.with_name(predictions_path.name + ".partial")
    with partial.open("w", encoding="utf-8") as predictions:
        for suite in gen:
            source, records = selected[suite]
            if not records:
                print(f"  {suite}: no records in {source}, skipped", file=sys.stderr)
                continue
            results[suite] = run_generation(recorder, suite, records, args.prompt_style, args.max_tokens, predictions,
                                            summary)
    if "ppl" in suites:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        results["ppl"] = run_perplexity(spec, inner, selected["ppl"][1], args.limit)
    result = {
        "label": label,
        "model": args.model if backend is None else backend.model_name,
        "adapter": args.adapter,
        "backend": inner.name if inner is not None else "transformers",
        "prompt_style": args.prompt_style,
        "decoding": {"greedy": _greedy(gen, best_of), "max_tokens": args.max_tokens, "threads": getattr(args, "threads", None),
                     "summary_repeat_penalty": tasks.summary_options(repeat_penalty=args.repeat_penalty).repeat_penalty,
                     "summary_best_of": best_of or "per section"},
        "data": str(data),
        "limit": args.limit,
        "limited": bool(args.limit),
        "limit_selection": "spread by id hash" if args.limit else None,  # earlier results: the first N
        "suites": results,
        "decode_tokens_per_s": round(recorder.decode_tokens_per_s(), 1) if recorder and recorder.decode_tokens_per_s() else None,
        "size": size_on_disk(spec) if spec is not None else {"model_bytes": None, "adapter_bytes": None},
        "machine": machine(inner.name if inner is not None else None),
        "wall_s": round(time.time() - started, 1),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "command": shlex.join(["python", "-m", "finetune.evaluate", *getattr(args, "argv", [])]),
        "predictions": out.with_suffix(".predictions.jsonl").name,
    }
    written = out.with_name(out.name + ".partial")
    written.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, predictions_path)
    os.replace(written, out)
    update_summary(Path(args.summary) if args.summary else out.parent / "summary.md", result)
    return result


def _select_suites(data: Path, suites: Sequence[str], limit: int | None) -> dict[str, tuple[Path, list[dict]]]:
    """Each suite's records and the file they come from, all read and checked before the
    model is loaded, so bad data stops a run at once rather than after hours of another suite."""
    files: dict[Path, list[dict]] = {}
    selected = {}
    for suite in suites:
        source = data / ("valid.jsonl" if suite in VALID_SUITES + ("ppl",) else "test.jsonl")
        try:
            if source not in files:
                files[source] = read_jsonl(source)
            # perplexity takes the whole file; its limit is per source (run_perplexity)
            records = files[source] if suite == "ppl" else select(files[source], suite, limit)
            selected[suite] = (source, records)
        except KeyError as exc:
            raise SystemExit(f"cannot build suite {suite}: a record of {source} has no field {exc}") from None
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot build suite {suite}: {exc}") from None
    return selected


def _greedy(suites: Sequence[str], best_of: int | None) -> bool:
    """Whether every summary of the run is one greedy draft."""
    if best_of is not None:
        return best_of == 1
    return not set(suites) & set(MTS_SUITES)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a model through the runtime's task layer.")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", help="PEFT adapter directory (runs on transformers)")
    p.add_argument("--backend", choices=("llama.cpp", "transformers"))
    p.add_argument("--suites", default="mts-test1", help=f"comma-separated: {','.join(SUITES)}")
    p.add_argument("--data", default="build/data/v1")
    p.add_argument("--limit", type=_at_least_one,
                   help="N examples per suite (ppl: per source), spread over it by a hash of their ids")
    p.add_argument("--out", required=True, help="metrics JSON; predictions go next to it")
    p.add_argument("--label", help="row name in summary.md (default: from model, adapter, style, limit)")
    p.add_argument("--max-tokens", type=_at_least_one, default=200)
    p.add_argument("--repeat-penalty", type=float,
                   help="repeat penalty for summaries (default: the app's); sweep it on mts-valid only")
    p.add_argument("--best-of", type=_at_least_one, default=None,
                   help=f"drafts per summary, the best one kept (default: the app's, {tasks.SUMMARY_BEST_OF} for "
                        "MTS-Dialog sections and 1 for others; 1: greedy only); sweep it on validation suites only")
    p.add_argument("--prompt-style", choices=PROMPT_STYLES, default="runtime",
                   help="baseline: the reference baseline's raw prompt for summaries (section code, no system prompt)")
    p.add_argument("--threads", type=_at_least_one, help="CPU threads for decoding and perplexity (default: all cores)")
    p.add_argument("--summary", help="Markdown table to update (default: summary.md next to --out)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        p = argparse.ArgumentParser(prog="finetune.evaluate plot", description="Bar chart comparing runs.")
        p.add_argument("results", nargs="+", type=Path)
        p.add_argument("--out", type=Path, default=Path("finetune/eval.png"))
        a = p.parse_args(argv[1:])
        plot(merge_by_model(read_results(a.results), [str(f) for f in a.results]), a.out)
        print(f"wrote {a.out}")
        return 0
    if argv[:1] == ["score"]:
        p = argparse.ArgumentParser(prog="finetune.evaluate score",
                                    description="Score a predictions file, also one a stopped run left (.partial).")
        p.add_argument("predictions", type=Path)
        a = p.parse_args(argv[1:])
        for suite, m in score_predictions(a.predictions).items():
            print(f"{suite}: {json.dumps(m)}")
        return 0
    args = parser().parse_args(argv)
    args.argv = argv
    result = evaluate(args)
    for suite, m in result["suites"].items():
        shown = {k: v for k, v in m.items() if k != "by_source"}
        print(f"{suite}: {json.dumps(shown)}")
    print(f"decode tokens/s: {result['decode_tokens_per_s']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
