"""Where things live: shipped assets in the repo, user state in XDG directories."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

APP = "health-assistant"
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
PROMPTS_DIR = DATA_DIR / "prompts"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(value) if value and os.path.isabs(value) else Path.home() / fallback
    return base / APP


def data_home() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share")


def cache_home() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache")


def config_home() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config")


def file_sha256(path: Path) -> str:
    """Content hash, read in blocks (model and data files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_key(path: Path) -> str:
    """A cheap identity of a file (path, size, modification time) for cache names:
    hashing a 100 MB model on every start would cost more than the cache saves."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only (exports hold health conversations), also
    when the file already existed with a wider mode. A device or a pipe (`/dev/null`,
    `-o >(gzip > x.gz)`) is written to as it is: its mode is not ours to change, and run as
    root a chmod of /dev/null would lock every other user out of it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fchmod(fd, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)


def pid_alive(pid: int) -> bool:
    """Whether a process still runs (a cache file named by its pid may still be written)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def prune_cache(folder: Path, keep: set[str], stale: re.Pattern, left_behind: re.Pattern) -> None:
    """Remove the entries of a cache folder that `stale` matches (older versions of what
    `keep` names) and those a killed process left (`left_behind`'s first group is its pid)
    once that process is gone. Entries are files or folders."""
    for path in folder.iterdir():
        if path.name in keep:
            continue
        m = left_behind.match(path.name)
        if stale.match(path.name) or (m and not pid_alive(int(m[1]))):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
