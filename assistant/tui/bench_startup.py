"""Start-up time of the terminal app: process start to the first interactive screen.

    python -m assistant.tui.bench_startup [--repeats 5] [--model NAME]

Each run is a fresh subprocess that runs the app headless (80x24) and exits on
Textual's `Ready` event (the DOM is mounted and the first frame is drawn), while
the model is still loading in its background thread. The same is measured for a
bare Textual app (one Label) as the baseline. Prints JSON: median seconds of
both, their ratio, every run, and which heavy modules were imported by then.
The goal is under 1.5 s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 1.5
HEAVY = ("torch", "transformers", "llama_cpp")


def _report(app, extra: dict) -> None:
    print(json.dumps({"ready": time.time(), "heavy": [m for m in HEAVY if m in sys.modules], **extra}),
          flush=True)
    app.exit()


def _child_bare() -> None:
    from textual.app import App
    from textual.widgets import Label

    class Bare(App):
        def compose(self):
            yield Label("hello")

        def on_ready(self) -> None:
            _report(self, {})

    Bare().run(headless=True)


def _child_app(model: str | None, db: str) -> None:
    from .app import HealthAssistantApp, run_tui  # noqa: F401 - the path the CLI takes

    def factory():
        from ..backends import load_backend

        return load_backend(model)

    class Probe(HealthAssistantApp):
        def on_ready(self) -> None:
            super().on_ready()  # starts the store and model threads, as in real use
            _report(self, {"model_ready": self.model_ready, "store_open": self.store is not None})

    Probe(backend_factory=factory, store=db, model_name=model).run(headless=True)


def _run_child(kind: str, model: str | None, db: str) -> dict:
    cmd = [sys.executable, "-m", "assistant.tui.bench_startup", "--child", kind, "--db", db]
    if model:
        cmd += ["--model", model]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    ended = time.time()
    line = next((l for l in proc.stdout.splitlines() if l.startswith("{") and '"ready"' in l), None)
    if line is None:
        raise RuntimeError(f"{kind} run printed no ready line (rc {proc.returncode}): {proc.stderr[-2000:]}")
    info = json.loads(line)
    return {"ready_s": info["ready"] - start, "exit_s": ended - start, **{k: v for k, v in info.items() if k != "ready"}}


def run_bench(repeats: int = 5, model: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        _run_child("bare", model, db)  # warm the file cache once, not counted
        _run_child("app", model, db)
        bare, app = [], []
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            bare.append(_run_child("bare", model, db))
            app.append(_run_child("app", model, db))
    app_s = statistics.median(r["ready_s"] for r in app)
    bare_s = statistics.median(r["ready_s"] for r in bare)
    return {
        "app_ready_s": round(app_s, 3),
        "bare_textual_ready_s": round(bare_s, 3),
        "ratio": round(app_s / bare_s, 2),
        "goal_s": GOAL_S,
        "under_goal": app_s < GOAL_S,
        "repeats": repeats,
        "app_runs_s": [round(r["ready_s"], 3) for r in app],
        "bare_runs_s": [round(r["ready_s"], 3) for r in bare],
        "heavy_modules_at_ready": sorted({m for r in app for m in r["heavy"]}),
        "model_ready_at_ready": any(r.get("model_ready") for r in app),
        "store_open_at_ready": any(r.get("store_open") for r in app),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None)
    parser.add_argument("--child", choices=("bare", "app"), help=argparse.SUPPRESS)
    parser.add_argument("--db", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "bare":
        _child_bare()
    elif args.child == "app":
        _child_app(args.model, args.db or str(Path(tempfile.mkdtemp()) / "bench.db"))
    else:
        print(json.dumps(run_bench(args.repeats, args.model), indent=2))


if __name__ == "__main__":
    main()
