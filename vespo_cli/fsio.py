"""Atomic file-system writes: a reader never sees a half-written file or directory.

An OSError inside these helpers that has an errno but names no file (a write or fsync failing for
space) is given the path being written, so the CLI's one-line error can name it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .interrupt import no_signals


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


def fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an OSError raised inside with an errno but no file name (a write or fsync that fails for
    space) the name `path`."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            e.filename = str(path)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it into place."""
    path = Path(path)
    with naming(path):
        with _atomic_path(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600, as do writers that recreate the file (safetensors)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success rename it to `path` (replacing an old one). Its files get
    the usual mode (0666 less the umask), whatever their writer gave them (transformers writes
    model.safetensors 0600, which a colleague's `vespo eval` of the checkpoint could not read)."""
    path = Path(path)
    with naming(path):
        with _atomic_dir(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o666 & ~_UMASK)
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            with no_signals():  # a SIGTERM between the renames would leave neither (interrupt.py)
                os.replace(path, old)
                os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove what the helpers above leave in `directory` when their process is killed mid-write
    (`.<name>.<random>.tmp` files and directories, `.<name>.old` directories); call it only while
    holding the lock of whoever writes there (lock.py). Returns what was removed."""
    d = Path(directory)
    stale = sorted(p for p in d.glob(".*") if p.name.endswith((".tmp", ".old"))) if d.is_dir() else []
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync: metrics survive a kill -9 up to the last full line."""
    line = (json.dumps(record, sort_keys=True, default=float) + "\n").encode()
    with naming(path), open(path, "ab+") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn last line (kill mid-write): don't glue this record to it
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file, ignoring a torn last line (from a kill mid-write) and any line that is not
    a JSON object (garbage, bytes that are not UTF-8)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_bytes().splitlines():
        with contextlib.suppress(ValueError):  # JSONDecodeError, UnicodeDecodeError
            obj = json.loads(line)
            if isinstance(obj, dict):  # a torn line can still parse (e.g. `12` of `123.4}`)
                out.append(obj)
    return out
