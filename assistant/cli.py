"""The `assistant` command."""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import click
from click_default_group import DefaultGroup
from rich.console import Console
from rich.markup import escape

from . import models as model_registry
from .backends import BACKENDS, BackendError, CancelToken, GenerationOptions, load_backend
from . import limits as input_limits
from .batch_io import (OutputError, OutputWriter, Record, RecordError, input_written_over, read_records,
                       run_identity)
from .cli_logs import logs
from .models import ModelError
from .safety.triage import SafetyConfigError, default_config
from .store import LogNotWritable, Store, StoreError, open_store
from .visible import visible
from .visit_notes import STYLES
from .tasks import (ANSWER_MAX_TOKENS, SUMMARY_BEST_OF, SUMMARY_MAX_TOKENS, SUMMARY_REPEAT_PENALTY, TaskError, answer,
                    summarize, summary_drafts, summary_options)

err = Console(stderr=True, highlight=False, soft_wrap=True)
# The shell's status for a command stopped by Ctrl-C (128 + SIGINT): `summarize visit.txt >
# note.txt` stopped half-way must not look like a finished note.
EXIT_CANCELLED = 130


def model_options(f):
    f = click.option("--model", "-m", default=None, help="Model name, .gguf file, HF directory or hub id.")(f)
    f = click.option("--adapter", type=click.Path(path_type=Path), default=None,
                     help="PEFT adapter directory (uses the transformers backend).")(f)
    f = click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Force a backend (default: llama.cpp for GGUF).")(f)
    return f


def generation_options(default_max: int):
    def deco(f):
        f = click.option("--max-tokens", type=click.IntRange(1), default=default_max, show_default=True)(f)
        f = click.option("--temperature", "-t", type=click.FloatRange(0), default=0.0, show_default=True)(f)
        f = click.option("--seed", type=click.IntRange(0, 2**32 - 2), default=0, show_default=True,
                         help="Seed for sampling (with --temperature above 0): the same seed, the same text.")(f)
        return f
    return deco


def log_options(f):
    f = click.option("--no-log", is_flag=True, help="Do not record this run in the session log.")(f)
    f = click.option("--db", type=click.Path(path_type=Path), envvar="ASSISTANT_DB", default=None,
                     help="Session log database (default: in the user data directory).")(f)
    return f


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return input_limits.parse_size(value)
        except ValueError as e:
            from_env = ctx is not None and param is not None and \
                ctx.get_parameter_source(param.name) == click.core.ParameterSource.ENVIRONMENT
            self.fail(f"{param.envvar}: {e}" if from_env else str(e), param, ctx)


def _keep_limit(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:
        ctx.meta[f"limit.{param.name}"] = value


def limit_options(f):
    """The input-size limits, kept on the click context (no command needs them as arguments)."""
    f = click.option(input_limits.FILE_OPTION, "max_input", type=_Size(), envvar=input_limits.FILE_ENV,
                     expose_value=False, callback=_keep_limit,
                     help=f"Largest input file read (default {input_limits.human(input_limits.DEFAULT_FILE)}; "
                          "K, M or G).")(f)
    f = click.option(input_limits.RECORD_OPTION, "max_record", type=_Size(), envvar=input_limits.RECORD_ENV,
                     expose_value=False, callback=_keep_limit,
                     help="Largest question or transcript "
                          f"(default {input_limits.human(input_limits.DEFAULT_RECORD)}; K, M or G).")(f)
    return f


def _limits() -> input_limits.Limits:
    meta = click.get_current_context().meta
    return input_limits.Limits(record=meta.get("limit.max_record", input_limits.DEFAULT_RECORD),
                               file=meta.get("limit.max_input", input_limits.DEFAULT_FILE))


def _text_arg_problem(text: str) -> str | None:
    """Bytes that were not UTF-8 on the command line arrive as lone surrogates, which
    neither the log nor the tokenizer can take: named here, before anything runs."""
    bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    return None if bad is None else f"is not UTF-8 text (character {bad + 1} is an undecodable byte)"


def _read_stdin(limit: int) -> str:
    """The question piped in, read no further than the record limit."""
    too_large = (f"the question on stdin is over the limit of {input_limits.human(limit)} per record "
                 f"(raise it with {input_limits.RECORD_OPTION} or {input_limits.RECORD_ENV})")
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stand-in for stdin: its text, bounded all the same
        text = sys.stdin.read(limit + 1)
        if input_limits.text_size(text) > limit:
            fail(too_large)
        return text
    try:
        data = input_limits.read_stream(stream, limit, "stdin")
    except input_limits.InputTooLarge:
        fail(too_large)
    except OSError as e:
        fail(f"cannot read stdin: {e.strerror}")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        fail(f"the question on stdin is not UTF-8 text (byte {e.start + 1})")


def fail(message: str) -> None:
    # visible(): an error may quote a record's id or a path, which may hold escape sequences
    err.print(f"[bold red]error:[/] {escape(visible(message))}")
    sys.exit(1)


@contextmanager
def user_errors():
    """Turn the errors a user can cause into one clear line instead of a traceback."""
    try:
        yield
    except (ModelError, BackendError, TaskError, OutputError, StoreError, SafetyConfigError) as exc:
        fail(str(exc))


def check_safety_config() -> None:
    """Read the safety rules before any model loads, so a mistake in a clinic's override is
    named at once rather than on the first emergency, half-way through a batch."""
    with user_errors():
        default_config()


def open_backend(model, adapter, backend):
    with user_errors():
        with err.status(f"loading {escape(str(model or model_registry.DEFAULT_MODEL))}..."):
            return load_backend(model, backend=backend, adapter=adapter)


@contextmanager
def sigint_cancels(token: CancelToken):
    """First Ctrl-C stops generation cleanly (partial text is kept); a second one exits."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if token.cancelled:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        token.cancel()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def open_log(db: Path | None, no_log: bool) -> Store | None:
    """The session log for this run, or None when logging is off (flag or `assistant logs off`)."""
    if no_log:
        return None
    try:
        return open_store(db)
    except LogNotWritable as e:
        # Answering matters more than logging: a log in a read-only folder is said, not fatal.
        err.print(f"[yellow]warning:[/] {escape(str(e))}; this run is not logged")
        return None
    except StoreError as e:
        fail(str(e))


class _ReplyLog:
    """A reply's row in the log while it streams. A write that fails (a full disk) is said
    once and logging stops; the answer goes on."""

    def __init__(self, writer):
        self.writer = writer

    def _do(self, method, *args, **kwargs) -> None:
        if self.writer is None:
            return
        try:
            getattr(self.writer, method)(*args, **kwargs)
        except StoreError as e:
            self.writer = None
            err.print(f"\n[yellow]warning:[/] the log stopped: {escape(str(e))}")

    def append(self, piece: str) -> None:
        self._do("append", piece)

    def finish(self, stats, status, meta) -> None:
        self._do("finish", stats, status=status, meta=meta)

    def fail(self, error: str) -> None:
        self._do("fail", error)


def logged_answer(store: Store | None, session_id: str | None, be, question: str, history, opts,
                  token: CancelToken, errors_end_run: bool = True):
    """Answer with streaming to stdout; the question is stored before generation
    starts and the reply is stored while it streams. With `errors_end_run` False a
    TaskError or BackendError is raised to the caller (a chat goes on to the next
    message) instead of ending the program."""
    answer_errors = user_errors if errors_end_run else nullcontext
    if store is None:
        with sigint_cancels(token), answer_errors():
            return answer(be, question, history, opts, on_text=_echo, cancel=token)
    log = _ReplyLog(None)
    try:
        store.add_message(session_id, "user", question)
        log.writer = store.start_reply(session_id, be.model_name, opts.to_dict())
    except StoreError as e:
        err.print(f"[yellow]warning:[/] the log stopped: {escape(str(e))}")

    def on_text(piece: str) -> None:
        _echo(piece)
        log.append(piece)

    try:
        with sigint_cancels(token), answer_errors():
            result = answer(be, question, history, opts, on_text=on_text, cancel=token)
    except (SystemExit, TaskError, BackendError) as exc:
        log.fail(str(exc) if isinstance(exc, (TaskError, BackendError)) else "generation failed")
        raise
    log.finish(result.stats.to_dict(), status="cancelled" if result.cancelled else "complete", meta=result.meta)
    return result


def _print_sources(result) -> None:
    sources = result.meta.get("sources") or []
    if sources:
        click.echo("\n\nSources:")
        for s in sources:
            click.echo(f"- {s['title']} <{s['url']}>")


@click.group(cls=DefaultGroup, default="tui", default_if_no_args=True)
@click.version_option(package_name="health-assistant")
def cli():
    """An offline health assistant: answers health questions and summarizes
    clinical conversations with a small language model on your CPU.

    Without a command it starts the terminal app (`assistant tui`)."""


@cli.command()
@model_options
@click.option("--max-tokens", type=click.IntRange(1), default=None, help="Reply length limit.")
@click.option("--db", type=click.Path(path_type=Path), envvar="ASSISTANT_DB", default=None,
              help="Session log database (default: in the user data directory).")
def tui(model, adapter, backend, max_tokens, db):
    """The terminal app (the default): chat, summarize, browse and search sessions."""
    from .tui import run_tui

    sys.exit(run_tui(model, adapter, backend, db, max_tokens=max_tokens))


@cli.command()
@model_options
@generation_options(ANSWER_MAX_TOKENS)
@log_options
def chat(model, adapter, backend, max_tokens, temperature, seed, no_log, db):
    """Chat in the terminal (plain line mode)."""
    check_safety_config()
    store = open_log(db, no_log)
    be = open_backend(model, adapter, backend)
    opts = GenerationOptions(max_tokens=max_tokens, temperature=temperature, seed=seed)
    history: list[dict] = []
    session_id = None
    # A line of bytes that are not UTF-8 then arrives with them as surrogates and is named;
    # with strict decoding, the rest of what was read with it would be lost.
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdin.reconfigure(errors="surrogateescape")
    err.print(f"[dim]{escape(be.model_name)} via {be.name}. Ctrl-C stops a reply, Ctrl-D quits.[/]")
    while True:
        try:
            question = click.prompt(click.style("you", fg="cyan", bold=True), prompt_suffix="> ")
        except (EOFError, click.Abort):
            err.print()
            return
        except UnicodeDecodeError as exc:  # a line of bytes that are not UTF-8 (strict stdin)
            err.print(f"[bold red]error:[/] that line is not UTF-8 text (byte {exc.start + 1}); type it again")
            continue
        if _text_arg_problem(question):  # the same, where stdin keeps such bytes as surrogates
            err.print(f"[bold red]error:[/] that line {_text_arg_problem(question)}; type it again")
            continue
        if not question.strip():
            continue
        if store is not None and session_id is None:
            with user_errors():
                session_id = store.new_session("chat", be.model_name, title=_title(question))
        try:
            result = logged_answer(store, session_id, be, question, history, opts, CancelToken(),
                                   errors_end_run=False)
        except (TaskError, BackendError) as exc:
            # One message the model cannot take (too long, say) must not end the conversation.
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            continue
        _print_sources(result)
        click.echo()
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": result.text}]
        _print_stats(result.stats)


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 60 else line[:59] + "…"


def _echo(piece: str) -> None:
    # A model may copy an escape sequence from a transcript: a terminal is shown it as text,
    # a file or a pipe gets the text as it is.
    sys.stdout.write(visible(piece) if sys.stdout.isatty() else piece)
    sys.stdout.flush()


def _print_stats(stats) -> None:
    rate = f"{stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else "-"
    ttft = f"{stats.ttft_s:.2f}s" if stats.ttft_s is not None else "-"
    note = " [yellow](cancelled)[/]" if stats.finish_reason == "cancelled" else ""
    err.print(f"[dim]{stats.completion_tokens} tokens, {rate}, first token {ttft}{note}[/]")


@cli.command()
@click.argument("question", required=False)
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), default=None,
              help="JSONL of {\"id\", \"question\"} (or a .txt/.csv of questions) to answer as a batch.")
@click.option("--output", "-o", "output_path", type=click.Path(path_type=Path), default=None,
              help="Where batch answers go (.jsonl or .md).")
@click.option("--id-column", default=None, help="CSV column holding the question's id.")
@click.option("--text-column", default=None, help="CSV column holding the question (default: 'question').")
@click.option("--overwrite", is_flag=True,
              help="Start the output afresh, replacing an earlier one (of this run or another) once a result is written.")
@model_options
@generation_options(ANSWER_MAX_TOKENS)
@log_options
@limit_options
def ask(question, input_path, output_path, id_column, text_column, overwrite, model, adapter, backend,
        max_tokens, temperature, seed, no_log, db):
    """Answer a health question, streaming the answer; or a batch with --input/--output."""
    opts = GenerationOptions(max_tokens=max_tokens, temperature=temperature, seed=seed)
    limits = _limits()
    check_safety_config()
    if input_path is not None:
        if question:
            fail("give either a QUESTION or --input, not both")
        if output_path is None:
            fail("--input needs --output")
        columns = dict(id_column=id_column, text_column=text_column)
        sys.exit(_run_batch("ask", [input_path], output_path, overwrite, model, adapter, backend, opts,
                            columns, store=open_log(db, no_log)))
    for given, flag in ((output_path, "--output"), (overwrite, "--overwrite"), (id_column, "--id-column"),
                        (text_column, "--text-column")):
        if given:
            fail(f"{flag} is for a batch of questions: give them with --input")
    if not question:
        if sys.stdin.isatty():
            fail("no question given (assistant ask \"QUESTION\", or pipe one on stdin)")
        question = _read_stdin(limits.record)
    if _text_arg_problem(question):
        fail(f"the question {_text_arg_problem(question)}")
    if limits.record_problem(input_limits.text_size(question)):
        fail(limits.record_problem(input_limits.text_size(question)))
    if not question.strip():
        fail("the question is empty")
    store = open_log(db, no_log)
    be = open_backend(model, adapter, backend)
    session_id = None
    if store is not None:
        try:
            session_id = store.new_session("chat", be.model_name, title=_title(question))
        except StoreError as e:
            err.print(f"[yellow]warning:[/] {escape(str(e))}; this question is not logged")
            store = None
    result = logged_answer(store, session_id, be, question, (), opts, CancelToken())
    _print_sources(result)
    click.echo()
    _print_stats(result.stats)
    if result.cancelled:  # what was printed is not the whole answer: say so to a script
        sys.exit(EXIT_CANCELLED)


@cli.command(name="summarize")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--output", "-o", "output_path", type=click.Path(path_type=Path), default=None,
              help=".jsonl or .md; without it, one input's summary is printed.")
@click.option("--section", default=None,
              help="Clinical-note section wanted (e.g. GENHX, 'Plan'); default: the visit's History of Present Illness.")
@click.option("--id-column", default=None, help="CSV column holding the record id.")
@click.option("--text-column", default=None, help="CSV column holding the transcript.")
@click.option("--section-column", default=None, help="CSV column naming the section wanted per row.")
@click.option("--overwrite", is_flag=True,
              help="Start the output afresh, replacing an earlier one (of this run or another) once a result is written.")
@model_options
@generation_options(SUMMARY_MAX_TOKENS)
@click.option("--repeat-penalty", type=click.FloatRange(1.0), default=None,
              help=f"Penalty for repeating tokens (default {SUMMARY_REPEAT_PENALTY}, chosen on validation data).")
@click.option("--best-of", type=click.IntRange(1, 64), default=None,
              help="Drafts per summary; the one closest to the others and to notes of similar visits is kept. "
                   f"Default: {SUMMARY_BEST_OF} for a section MTS-Dialog names (GENHX, 'Plan', ...), 1 for other "
                   "sections and whole-visit notes. 1 is fastest (one greedy draft, streamed).")
@click.option("--style", type=click.Choice(STYLES), default=None,
              help="Layout of a whole-visit note (no section): soap (the default; headed sections as in "
                   "ACI-Bench's notes) or gp (terse, one line a section).")
@log_options
@limit_options
def summarize_cmd(inputs, output_path, section, id_column, text_column, section_column, overwrite,
                  model, adapter, backend, max_tokens, temperature, seed, repeat_penalty, best_of, style, no_log, db):
    """Summarize transcripts (.txt files, JSONL or CSV) into clinical-note sections."""
    if not inputs:
        fail("no input files given")
    if section and _text_arg_problem(section):
        fail(f"--section {_text_arg_problem(section)}")
    opts = summary_options(max_tokens=max_tokens, temperature=temperature, seed=seed,
                           repeat_penalty=repeat_penalty)
    columns = dict(id_column=id_column, text_column=text_column, section_column=section_column)
    if output_path is None:
        if overwrite:
            fail("--overwrite replaces a batch output: give one with --output")
        records = [r for p in inputs for r in read_records(p, "summarize", **columns, limits=_limits())]
        errors = [r for r in records if isinstance(r, RecordError)]
        good = [r for r in records if isinstance(r, Record)]
        if errors:
            for e in errors:
                err.print(f"[red]{escape(visible(str(e)))}[/]")
            if not good:
                sys.exit(1)
        if len(good) != 1:
            fail(f"{len(good)} transcripts found; give --output to summarize a batch")
        store = open_log(db, no_log)
        be = open_backend(model, adapter, backend)
        token = CancelToken()
        # Drafts are not streamed (only the chosen one is shown), so say what is going on.
        drafts = best_of or summary_drafts(good[0].section or section)
        waiting = err.status(f"drafting {drafts} summaries…") if drafts > 1 else contextlib.nullcontext()
        shown: list[str] = []

        def echo(piece: str) -> None:
            shown.append(piece)
            _echo(piece)

        with sigint_cancels(token), user_errors(), waiting:
            result = summarize(be, good[0].text, good[0].section or section, opts, on_text=echo, cancel=token,
                               best_of=drafts, style=style)
        if not shown and result.text:  # a long transcript stopped before its merge: the part summaries
            _echo(result.text)
        click.echo()
        try:  # the summary is printed already: a log that cannot take it is said, not fatal
            if store is not None:
                sid, run_id = store.start_batch("summarize", str(good[0].source), None, be.model_name)
                store.add_batch_item(sid, good[0].text, result.text, model=be.model_name, options=opts.to_dict(),
                                     stats=result.stats.to_dict(),
                                     status="cancelled" if result.cancelled else "complete",
                                     meta={"id": good[0].id, "section": good[0].section or section,
                                           **result.meta})
                store.finish_batch(run_id, {"done": 1}, "cancelled" if result.cancelled else "complete")
        except StoreError as e:
            err.print(f"[yellow]warning:[/] {escape(str(e))}; this summary is not logged")
        _print_stats(result.stats)
        sys.exit(EXIT_CANCELLED if result.cancelled else 1 if errors else 0)
    sys.exit(_run_batch("summarize", list(inputs), output_path, overwrite, model, adapter, backend, opts,
                        columns, section=section, store=open_log(db, no_log), best_of=best_of, style=style))


def _run_batch(task, inputs, output_path, overwrite, model, adapter, backend, opts, columns,
               section=None, store: Store | None = None, best_of: int | None = 1, style: str | None = None) -> int:
    records: list[Record] = []
    errors: list[RecordError] = []
    limits = _limits()
    for path in inputs:
        for r in read_records(path, task, **columns, limits=limits):
            (errors if isinstance(r, RecordError) else records).append(r)
    unique: dict[str, Record] = {}
    for r in records:
        if r.id in unique:
            errors.append(RecordError(r.source, f"duplicate id '{r.id}'"))
        else:
            unique[r.id] = r
    records = list(unique.values())
    clash = input_written_over(output_path, inputs)
    if clash is not None:
        same = "" if str(clash) == str(output_path) else f" (the same file as {clash})"
        fail(f"{output_path} is also an input{same}; write the results to another file")
    if not records:
        _report_errors(errors)
        return 1
    spec_name = model or model_registry.DEFAULT_MODEL
    # Everything that changes what a record's result is: a resumed run must match all of it.
    identity = run_identity(task, spec_name, inputs, adapter=str(adapter) if adapter else None, backend=backend,
                            section=section, max_tokens=opts.max_tokens, temperature=opts.temperature,
                            seed=opts.seed, repeat_penalty=opts.repeat_penalty,
                            **{k: v for k, v in columns.items() if v is not None},
                            **({"best_of": best_of or "per section"} if task == "summarize" else {}),
                            **({"style": style} if style else {}))
    with user_errors():
        writer = OutputWriter(output_path, identity, overwrite=overwrite)
    # A write that failed (a full disk for the output or the log) ends the run as an error,
    # not as a cancel; it is named after the output is closed and its lock released.
    failure: str | None = None
    try:
        changed = writer.changed(records)
        if changed:
            shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
            fail(f"{output_path}: the input of {len(changed)} finished record(s) changed since their results were "
                 f"written (id {shown}); use --overwrite to start again, or write to another --output")
        todo = [r for r in records if r.id not in writer.done]
        skipped = len(records) - len(todo)
        if skipped:
            err.print(f"[dim]resuming: {skipped} already in {escape(str(output_path))}[/]")
        done = 0
        run = None
        token = CancelToken()
        if todo:
            be = open_backend(model, adapter, backend)
            if store is not None:  # a batch run is one session
                with user_errors():
                    run = store.start_batch(task, ", ".join(map(str, inputs)), str(output_path), be.model_name)
            status = "cancelled"  # unless the loop ends: a second Ctrl-C leaves it by KeyboardInterrupt
            already = len(writer.done)
            try:
                _process(task, todo, be, writer, store, run, opts, section, best_of, token, errors, style)
                status = ("complete" if len(writer.done) - already == len(todo) and not errors
                          else "cancelled" if token.cancelled else "partial")
            except (OutputError, StoreError) as exc:
                failure, status = str(exc), "error"
            finally:
                be.close()
                done = len(writer.done) - already
                if run is not None:
                    try:
                        store.finish_batch(run[1], {"done": done, "skipped": skipped, "failed": len(errors),
                                                    "remaining": len(todo) - done}, status)
                    except StoreError as exc:
                        failure = failure or str(exc)
    finally:
        try:
            writer.close()  # also releases the output's lock
        except OutputError as exc:
            failure = failure or str(exc)
    remaining = len(todo) - done
    err.print(f"{done} written to {escape(str(output_path))}" + (f", {skipped} already there" if skipped else "")
              + (f", {remaining} left (run again to resume)" if remaining and not errors else ""))
    if failure:
        if errors:
            _report_errors(errors)
        fail(failure)
    if errors:
        _report_errors(errors)
        return 1
    return 1 if remaining else 0


def _process(task, todo, be, writer, store, run, opts, section, best_of, token, errors, style=None) -> None:
    """Run the task on each record, writing each result as it comes (`writer.done` counts them)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=False) as progress, sigint_cancels(token):
        bar = progress.add_task(task, total=len(todo))
        for r in todo:
            if token.cancelled:
                break
            try:
                if task == "summarize":
                    result = summarize(be, r.text, r.section or section, opts, cancel=token, best_of=best_of,
                                       style=style)
                    out = {"id": r.id, "summary": result.text}
                else:
                    result = answer(be, r.text, options=opts, cancel=token)
                    out = {"id": r.id, "question": r.text, "answer": result.text,
                           "triage": result.meta["triage"], "sources": result.meta["sources"]}
            except (TaskError, BackendError) as exc:
                errors.append(RecordError(r.source, str(exc)))
                if run is not None:
                    # a long visit's finished part summaries stay in the log with the error
                    store.add_batch_item(run[0], r.text, getattr(exc, "partial", ""), model=be.model_name,
                                         status="error", meta={"id": r.id, "error": str(exc)})
                progress.advance(bar)
                continue
            if result.cancelled:
                break  # not written: a resumed run redoes it whole
            out.update(model=result.model, prompt_tokens=result.stats.prompt_tokens,
                       completion_tokens=result.stats.completion_tokens,
                       seconds=round(result.stats.total_s, 3))
            writer.write(out, r)  # an OutputError (a full disk) ends the run: the caller says so
            if run is not None:
                store.add_batch_item(run[0], r.text, result.text, model=result.model,
                                     options=opts.to_dict(), stats=result.stats.to_dict(),
                                     meta={"id": r.id, "section": r.section or section, **result.meta})
            progress.advance(bar)


def _report_errors(errors: list[RecordError]) -> None:
    err.print(f"[bold red]{len(errors)} record(s) failed:[/]")
    for e in errors:
        err.print(f"  [red]{escape(visible(str(e)))}[/]")


@cli.group(invoke_without_command=True)
@click.pass_context
def models(ctx):
    """List the models available on this machine."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(models_list)


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json):
    """Available models with size, quantization and parameter count."""
    from rich.table import Table

    rows = []
    for name, note in model_registry.available():
        with user_errors():
            i = model_registry.info(model_registry.resolve(name))
        rows.append({**i.to_dict(), "note": note})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "kind", "size", "quant", "params", "note")
    for r in rows:
        table.add_row(r["name"], r["kind"], _mb(r["size_bytes"]), r["quantization"] or "-",
                      _params(r["parameters"]), r["note"])
    Console().print(table)


@models.command(name="info")
@click.argument("name")
@click.option("--adapter", type=click.Path(path_type=Path), default=None)
def models_info(name, adapter):
    """Details of one model (a name, a .gguf file or a model directory)."""
    with user_errors():
        i = model_registry.info(model_registry.resolve(name, adapter=adapter))
    click.echo(json.dumps(i.to_dict(), indent=2, default=str))


def _mb(n):
    return f"{n / 1e6:.0f} MB" if n else "-"


def _params(n):
    return f"{n / 1e6:.1f} M" if n else "-"


@cli.command()
@click.argument("what", type=click.Choice(["runtime", "logging", "best-of"]), default="runtime")
@click.option("--model", "-m", default=None)
@click.option("--tokens", type=click.IntRange(8), default=128, show_default=True, help="New tokens per reply.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--skip-transformers", is_flag=True, help="Leave out the (slow) transformers path.")
def bench(what, model, tokens, repeats, skip_transformers):
    """Benchmarks that print ratios measured in one run.

    runtime: decode speed and time to first token of the runtime vs raw
    llama-cpp-python vs transformers. logging: the cost of logging a streamed
    reply relative to not logging it. best-of: the time of a summary chosen among
    the default number of drafts relative to one greedy draft (--repeats transcripts)."""
    with user_errors():
        if what == "runtime":
            from .bench import run_bench

            result = run_bench(model, tokens, repeats, include_transformers=not skip_transformers,
                               log=lambda m: err.print(f"[dim]{escape(m)}[/]"))
        elif what == "best-of":
            from . import bench_best_of

            result = bench_best_of.run(open_backend(model, None, None), transcripts=repeats,
                                       log=lambda m: err.print(f"[dim]{escape(m)}[/]"))
        else:
            from . import bench_logging

            be = open_backend(model, None, None)
            result = bench_logging.run(n_tokens=tokens, repeats=repeats, backend=be)
    click.echo(json.dumps(result, indent=2))


cli.add_command(logs)


def main() -> None:
    cli()
