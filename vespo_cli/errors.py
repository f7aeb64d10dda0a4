"""Errors the CLI reports on one line: bad input (exit 2) and faults of the machine (exit 1)."""

from __future__ import annotations

import errno
import os

CAUSES = {  # errno → the words of the one-line error
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "exists, and is not a directory",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOENT: "no such file or directory",
}


def describe_os_error(e: OSError) -> str:
    """'<path>: <cause>' (or '<path> → <path2>: <cause>') for an OSError; a strerror that is not the
    system's own (a message vespo wrote) is kept as it is."""
    own = e.errno is not None and e.strerror == os.strerror(e.errno)
    cause = CAUSES.get(e.errno, (e.strerror or "").lower()) if own else e.strerror
    cause = cause or str(e) or type(e).__name__
    where = " → ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {cause}" if where else cause


_MESSAGES = {os.strerror(n).lower(): n for n in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)}


def as_os_error(e: BaseException) -> OSError | None:
    """A library's exception that is a fault of the machine, as an OSError (one line, exit 1): an
    OSError anywhere in its cause chain, or one carrying an errno (`e.errno`), or whose message is a
    disk or permission fault ("No space left on device": tokenizers raises a plain Exception);
    None for any other exception (a bug: its traceback is kept)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        code = getattr(e, "errno", None)
        text = str(e).lower()
        code = (
            code
            if isinstance(code, int) and code in errno.errorcode
            else next((n for m, n in _MESSAGES.items() if m in text), None)
        )
        if code is not None:
            where = f"{type(e).__module__}.{type(e).__name__}".removeprefix("builtins.")
            return OSError(code, f"{CAUSES.get(code, os.strerror(code).lower())} (raised as {where})")
        e = e.__cause__  # `raise … from` an OSError (not an error raised while handling one)
    return None


class UserError(Exception):
    """Bad input (file, key, value). The message names it and says what was expected."""

    exit_code = 2


class EngineError(UserError):
    """An inference engine that failed to open (exit 1, a fault rather than bad input): one line naming the
    engine, the model and the engine's own first line; --debug shows the traceback."""

    exit_code = 1
