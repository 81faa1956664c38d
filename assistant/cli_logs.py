"""`assistant logs`: browse, search, export and prune the session log.

Register on the main group with ``cli.add_command(logs)``. Every command takes
``--db PATH`` (or ``$ASSISTANT_DB``); without a subcommand, `logs` lists sessions.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from assistant import limits as input_limits
from assistant import store as store_mod
from assistant.store import Store, StoreError
from assistant.visible import visible, visible_line

_MARK = ("\x02", "\x03")  # snippet highlight markers that cannot occur in typed text
# Below this width rich cuts ids (26 characters) short of uniqueness, and at 0 prints blank
# lines: a narrower terminal gets lines that wrap instead.
MIN_WIDTH = 60


class _LogsGroup(click.Group):
    """Defaults to `list` (also when only options are given) and reports StoreError in one red line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] != "--help"):
            # Options first, as in `logs --db FILE show ID`: the subcommand goes before them.
            i = self._command_at(args)
            args = ["list", *args] if i is None else [args[i], *args[:i], *args[i + 1:]]
        return super().parse_args(ctx, args)

    def _command_at(self, args: list[str]) -> int | None:
        """Where the subcommand's name is, skipping the values of options (`--db backup`)."""
        takes_value = {opt for cmd in self.commands.values() for p in cmd.params
                       if isinstance(p, click.Option) and not p.is_flag for opt in p.opts}
        i = 0
        while i < len(args):
            if args[i] in takes_value:
                i += 2
                continue
            if args[i] in self.commands:
                return i
            i += 1
        return None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StoreError as e:
            click.secho(f"Error: {' '.join(visible(str(e)).split())}", fg="red", err=True)
            ctx.exit(1)


def db_option(fn):
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=store_mod.DB_ENV,
        help=f"Log database (default: ${store_mod.DB_ENV} or {store_mod.default_db_path()}).",
    )(fn)


def _open(db_path: Path | None, create: bool = False, reading: bool = False) -> Store:
    """The log database; only commands that add to it (import) may create it, so a
    mistyped --db is an error rather than a new empty database. A command that only
    reads (`reading`) also reads a log it may not write."""
    path = store_mod.resolve_db_path(db_path)
    if not create and not path.exists():
        if path.is_symlink():
            try:
                os.stat(path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise StoreError(f"{path}: is a symlink loop (a link that leads back to itself)") from None
        raise StoreError(f"{path}: no log database here (nothing logged yet, or a mistyped --db)")
    return Store(db_path, read_only_ok=reading)


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def _console(min_width: int = MIN_WIDTH) -> Console:
    # Created per call so output follows click's (possibly redirected) stdout.
    console = Console(highlight=False, soft_wrap=False)
    if console.width < min_width:
        console = Console(highlight=False, soft_wrap=False, width=min_width)
    return console


@click.group(cls=_LogsGroup)
def logs():
    """Browse and manage the local log of sessions (no subcommand: list)."""


@logs.command("list")
@db_option
@click.option("-n", "--limit", default=20, show_default=True, help="How many sessions.")
@click.option("--mode", type=click.Choice(store_mod.MODES), help="Only this kind of session.")
@click.option("--archived", is_flag=True, help="Include archived sessions.")
def list_cmd(db_path, limit, mode, archived):
    """List recent sessions."""
    path = store_mod.resolve_db_path(db_path)
    if not path.exists() and not path.is_symlink():  # nothing to list, and listing must not create it
        click.echo(f"No sessions logged yet (no database at {path}).")
        return
    with _open(db_path, reading=True) as st:
        rows = st.list_sessions(limit=limit, mode=mode, include_archived=archived)
    if not rows:
        click.echo("No sessions logged yet.")
        return
    # Widths set here, not left to rich: squeezed, it drops whole columns (the message count
    # went first on an 80-column terminal). The id, date, mode and count keep their width;
    # the model name, then the title, give way.
    id_w = max(26, *(len(visible_line(r["id"])) for r in rows))  # an imported id may be longer
    mode_w = max(4, *(len(r["mode"]) for r in rows))
    msgs_w = max(4, *(len(str(r["message_count"])) for r in rows))
    model_w = min(24, max(5, *(len(r["model"] or "-") for r in rows)))
    fixed = id_w + 16 + mode_w + msgs_w + 2 * 5  # five gaps of two spaces
    console = _console(fixed + 8 + 5)
    title_w = console.width - fixed - model_w
    if title_w < 16:
        model_w = max(8, model_w - (16 - title_w))
        title_w = max(5, console.width - fixed - model_w)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("id", no_wrap=True, width=id_w)
    table.add_column("when", no_wrap=True, width=16)
    table.add_column("mode", no_wrap=True, width=mode_w)
    table.add_column("model", no_wrap=True, width=model_w, overflow="ellipsis")
    table.add_column("msgs", justify="right", no_wrap=True, width=msgs_w)
    table.add_column("title", no_wrap=True, width=title_w, overflow="ellipsis")
    for r in rows:
        title = visible_line(r["title"] or r["preview"] or "")
        if r["archived"]:
            title = f"[archived] {title}"
        table.add_row(Text(visible_line(r["id"])), _when(r["updated"]), r["mode"], Text(visible_line(r["model"] or "-")),
                      str(r["message_count"]), Text(title, no_wrap=True, overflow="ellipsis"))
    console.print(table)


@logs.command()
@db_option
@click.argument("session_id")
def show(db_path, session_id):
    """Show one session with all its messages (an id prefix is enough)."""
    with _open(db_path, reading=True) as st:
        s = st.get_session(session_id)
    con = _console()
    # Every stored string goes through visible(): an imported export or a summarized
    # transcript may hold escape sequences meant for the terminal.
    con.print(Text(visible_line(s["title"] or "Untitled session"), style="bold"))
    con.print(Text(visible_line(f"{s['id']} · {s['mode']} · {s['model'] or '-'} · {_when(s['created'])}"),
                   style="dim"))
    for r in s["batch_runs"]:
        con.print(Text(visible_line(f"batch {r['task']}: {r['input_path']} -> {r['output_path'] or '-'} "
                                    f"({r['status']}, {r['counts']})"), style="dim"))
    notes = store_mod.message_notes(s["messages"])
    for m in s["messages"]:
        head = Text(f"\n{visible_line(m['role'])}", style="bold cyan" if m["role"] == "user" else "bold green")
        head.append(f" · {_when(m['created'])}", style="dim")
        if m["model"] and m["role"] == "assistant":
            head.append(f" · {visible_line(m['model'])}", style="dim")
        if m["status"] != "complete":
            head.append(f" · {m['status']}", style="bold yellow" if m["status"] != "error" else "bold red")
        for note in notes.get(m["id"], []):
            head.append(f" · {note}", style="bold red" if note.startswith("triage") else "dim")
        con.print(head)
        con.print(Text(visible(m["content"] or "(empty)")))
        if m["meta"] and m["meta"].get("error"):
            con.print(Text(f"error: {visible(str(m['meta']['error']))}", style="red"))


@logs.command()
@db_option
@click.argument("query")
@click.option("-n", "--limit", default=20, show_default=True)
def search(db_path, query, limit):
    """Full-text search over every message, best matches first."""
    with _open(db_path, reading=True) as st:
        hits = st.search(query, limit=limit, mark=_MARK)
    if not hits:
        click.echo("No matches.")
        return
    con = _console()
    for h in hits:
        line = Text(visible_line(f"{h['session_id']}  {_when(h['created'])}  {h['role']}"), style="dim")
        if h["status"] != "complete":
            line.append(f"  {h['status']}", style="yellow")
        con.print(line)
        con.print(_highlight(h["snippet"]))


def _highlight(snippet: str) -> Text:
    text = Text("  ")
    for i, part in enumerate(snippet.replace(_MARK[1], _MARK[0]).split(_MARK[0])):
        text.append(visible_line(part), style="bold reverse" if i % 2 else None)
    return text


@logs.command()
@db_option
@click.argument("session_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Export every session.")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout.")
def export(db_path, session_ids, all_, fmt, output):
    """Export sessions as Markdown or JSON (JSON can be imported again)."""
    if not session_ids and not all_:
        raise click.UsageError("give one or more session ids, or --all")
    with _open(db_path, reading=True) as st:
        text = st.export(None if all_ else session_ids, fmt=fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    store_mod.write_export(output, text)
    click.echo(f"Wrote {output}")


@logs.command("import")
@db_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_cmd(db_path, file):
    """Import a JSON export (sessions already present are skipped)."""
    try:
        max_bytes = input_limits.Limits.from_env().file
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    with _open(db_path, create=True) as st:
        counts = st.import_json(file, max_bytes=max_bytes)
    click.echo(f"Imported {counts['sessions']} sessions ({counts['messages']} messages), skipped {counts['skipped']}.")


@logs.command()
@db_option
@click.argument("session_ids", nargs=-1)
@click.option("--before", "before", metavar="DATE", help="Delete everything older than this ISO date/time.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--vacuum", is_flag=True, help="Afterwards, compact the file so deleted text leaves the disk.")
def delete(db_path, session_ids, before, yes, vacuum):
    """Delete sessions by id, or everything before a date."""
    if bool(session_ids) == bool(before):
        raise click.UsageError("give session ids or --before DATE (not both)")
    cutoff = None
    if before:
        try:
            cutoff = datetime.fromisoformat(before)
        except ValueError:
            raise click.BadParameter(f"{before!r} is not an ISO date such as 2025-01-31", param_hint="--before")
        try:  # the log compares UTC times; a date at either end of the calendar has none
            cutoff.astimezone(timezone.utc)
        except (OverflowError, ValueError):
            raise click.BadParameter(f"{before!r} is out of the range of dates the log can compare "
                                     "(years 1 to 9999 in UTC)", param_hint="--before") from None
    with _open(db_path) as st:
        if session_ids:
            sessions = [st.get_session(i) for i in session_ids]  # fail before deleting anything
            ids = [s["id"] for s in sessions]
            # Name them: an id prefix stands for a session the user may not have meant.
            what = f"{len(ids)} session(s): " + "; ".join(f"{s['id']} ({s['title'] or 'Untitled'})" for s in sessions)
        else:
            what = f"every message before {cutoff.isoformat(sep=' ')}"
        if not yes and not click.confirm(f"Permanently delete {what}?"):
            click.echo("Nothing deleted.")
            return
        if session_ids:
            for sid in ids:
                st.delete_session(sid)
            click.echo(f"Deleted {len(ids)} session(s).")
        else:
            counts = st.delete_before(cutoff)
            click.echo(f"Deleted {counts['messages']} messages and {counts['sessions']} sessions.")
        if vacuum:
            st.vacuum()
            click.echo("Vacuumed.")


@logs.command()
@db_option
def vacuum(db_path):
    """Rewrite the log so that deleted text is gone from the disk too."""
    with _open(db_path) as st:
        st.vacuum()
    click.echo("Vacuumed.")


@logs.command()
@db_option
@click.argument("session_id")
@click.argument("title")
def rename(db_path, session_id, title):
    """Give a session a title."""
    with _open(db_path) as st:
        st.rename_session(session_id, title)


@logs.command()
@db_option
@click.argument("session_id")
@click.option("--undo", is_flag=True, help="Unarchive.")
def archive(db_path, session_id, undo):
    """Hide a session from `logs list` without deleting it."""
    with _open(db_path) as st:
        st.archive_session(session_id, archived=not undo)


@logs.command()
@db_option
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def backup(db_path, dest):
    """Copy the database safely, even while the assistant is running."""
    with _open(db_path, reading=True) as st:
        st.backup(dest)
    click.echo(f"Backed up to {dest}")


@logs.command()
@db_option
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def recover(db_path, dest):
    """Copy what can still be read of a damaged log into a new file DEST (the damaged log is
    only read). Then use DEST with --db, or move it where the log belongs."""
    source = store_mod.resolve_db_path(db_path)
    counts = store_mod.recover(source, dest)
    stand_ins = f" ({counts['stand_ins']} whose details were lost, titled as such)" if counts["stand_ins"] else ""
    click.echo(f"Recovered {counts['sessions']} sessions{stand_ins}, {counts['messages']} messages and "
               f"{counts['batch_runs']} batch runs into {dest}.")
    if counts["lost_ranges"] or counts["invalid"]:
        click.echo(f"{counts['lost_ranges']} unreadable stretch(es) of the file were skipped"
                   + (f" and {counts['invalid']} damaged row(s) left out" if counts["invalid"] else "")
                   + f"; {source} is left as it was.")


@logs.command()
@db_option
def path(db_path):
    """Print the database path."""
    click.echo(str(store_mod.resolve_db_path(db_path)))


@logs.command()
@db_option
def on(db_path):
    """Turn session logging on (persists)."""
    store_mod.set_logging(True)
    click.echo("Session logging is on.")


@logs.command()
@db_option
def off(db_path):
    """Turn session logging off (persists); existing logs are kept."""
    store_mod.set_logging(False)
    click.echo("Session logging is off.")


@logs.command()
@db_option
def status(db_path):
    """Say whether logging is on, where the database is and how big it is."""
    p = store_mod.resolve_db_path(db_path)
    click.echo(f"Logging: {'on' if store_mod.logging_enabled() else 'off'}")
    click.echo(f"Database: {p}")
    if p.exists():
        with _open(db_path, reading=True) as st:
            info = st.summary()
            damage = st.check()
        click.echo(f"Sessions: {info['sessions']}, messages: {info['messages']}, size: {info['size_bytes'] / 1024:.0f} KiB")
        if damage:
            click.echo(f"Integrity: damaged ({damage}); {store_mod.RECOVER_HINT}")
        else:
            click.echo("Integrity: ok" if damage == "" else "Integrity: not checked in full (a large log)")
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            # A log made by an earlier version or copied in may be readable by others; its mode
            # is the owner's choice (a shared kiosk group), so it is said, not changed.
            click.echo(f"Permissions: {mode:04o}, readable by other users: `chmod 600 {p}` makes it private")
    else:
        click.echo("Sessions: 0 (no database yet)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(logs())
