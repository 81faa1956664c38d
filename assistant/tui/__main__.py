"""`python -m assistant.tui [--model NAME] [--db PATH]`: the terminal app, before
(or without) the `assistant tui` command."""
from __future__ import annotations

import argparse
import sys

from . import run_tui


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assistant.tui", description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", default=None, help="model name, .gguf file or HF directory")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory (transformers backend)")
    parser.add_argument("--backend", default=None, choices=("llama.cpp", "transformers"))
    parser.add_argument("--db", default=None, help="session database (default: $ASSISTANT_DB or the user data dir)")
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    return run_tui(args.model, args.adapter, args.backend, args.db, max_tokens=args.max_tokens)


if __name__ == "__main__":
    sys.exit(main())
