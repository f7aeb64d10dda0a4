"""Math-verify 0/1 rewards against a reference answer: answer extraction and timeout-bounded scoring.

Extraction order (on the last `MAX_RESPONSE_CHARS` characters of a response only):
  1. the last complete, non-empty `\\boxed{...}` / `\\fbox{...}` (balanced braces);
  2. else the last DAPO-style line `Answer: ...` (also `**Answer:** ...`, `Final answer: ...`);
  3. else math-verify's own extraction on the text.
The extracted answer is parsed by math-verify and compared with the parsed reference.

math-verify bounds its own work with `signal.alarm`, which fails outside the main thread and cannot
stop a long C-level sympy computation (`9^9^9^9`). So `RewardScorer` scores in worker processes with
math-verify's timeouts disabled and enforces its own per-sample wall-clock limit by killing the worker
that overruns and starting a replacement (reward 0, `timed_out=True`).
"""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path

log = logging.getLogger(__name__)

MAX_RESPONSE_CHARS = 4096  # only the tail of a response is considered (answers come last)
MAX_ANSWER_CHARS = 512  # an extracted answer longer than this is not an answer


@dataclass(frozen=True)
class Score:
    reward: float
    correct: bool
    extracted_answer: str
    timed_out: bool


# --------------------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_ANSWER_RE = re.compile(r"answer\s*(?:\*\*|__)?\s*[:：]([^\n]*)", re.IGNORECASE)


def _matching_braces(text: str) -> dict[int, int]:
    """Map index of each `{` to the index of its matching `}` (linear; `\\{`, `\\}` are literals)."""
    match: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def _last_boxed(text: str) -> str | None:
    starts = [m.end() - 1 for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    match = _matching_braces(text)
    for open_idx in reversed(starts):
        close_idx = match.get(open_idx)
        if close_idx is None:
            continue  # truncated box
        content = text[open_idx + 1 : close_idx].strip()
        if content:
            return content
    return None


def _clean_answer_line(s: str) -> str:
    s = s.strip().strip("*_").strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)].strip()
            break
    return s.rstrip(".").strip()


def _last_answer_line(text: str) -> str | None:
    for m in reversed(list(_ANSWER_RE.finditer(text))):
        content = _clean_answer_line(m.group(1))
        if content:
            return content
    return None


def extract_answer(response: str) -> str | None:
    """The final answer written in `response` (last `\\boxed{}`, else last `Answer:` line), or None.
    Only the last `MAX_RESPONSE_CHARS` characters are read."""
    text = response[-MAX_RESPONSE_CHARS:]
    ans = _last_boxed(text)
    if ans is None:
        ans = _last_answer_line(text)
    if ans is not None and len(ans) > MAX_ANSWER_CHARS:
        return None
    return ans


# ---------------------------------------------------------------------------------------- scoring


class _DropTimeoutDisabledWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_mv_ready = False


def _mv():
    """Import math-verify lazily (~2 s: sympy + the LaTeX grammar)."""
    global _mv_ready
    import math_verify

    if not _mv_ready:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        _mv_ready = True
    return math_verify


def _as_math(ans: str) -> str:
    """Wrap an extracted answer as inline math for math-verify."""
    ans = ans.replace("\\$", "").replace("$", "").strip()
    return f"${ans}$"


@lru_cache(maxsize=4096)
def _parse_reference(reference: str) -> tuple:
    return tuple(_mv().parse(_as_math(reference), parsing_timeout=None))


def score_one(response: str, reference: str) -> Score:
    """Score one response in-process, with no timeout (`RewardScorer` runs this in killable workers)."""
    mv = _mv()
    text = response[-MAX_RESPONSE_CHARS:]
    gold = list(_parse_reference(reference))
    ans = extract_answer(text)
    if ans is None:
        # Fallback: the last number written, as a literal. Not math-verify's free extraction, which
        # evaluates expressions: a policy that restates "What is 2 + 8?" as "2 + 8" would score.
        numbers = _NUMBER_RE.findall(text)
        ans = numbers[-1].replace(",", "") if numbers else None
    if ans is not None:
        pred = mv.parse(_as_math(ans), parsing_timeout=None)
        extracted = ans
    else:
        pred, extracted = [], ""
    if gold and pred:
        correct = bool(mv.verify(gold, pred, timeout_seconds=None))
    else:  # nothing parseable on one side: plain string comparison
        correct = bool(extracted) and extracted.strip() == reference.strip()
    return Score(float(correct), correct, extracted, False)


# ------------------------------------------------------------------------------------ worker pool
#
# One "zygote" subprocess imports math-verify once (~2 s) and then only forks warm scoring workers on
# request, so a worker killed for overrunning is replaced in milliseconds. A plain subprocess (not
# multiprocessing spawn/forkserver) so nothing depends on how the host process was started: no
# re-import of `__main__`, no process-global start-method state. Lifetimes: the zygote exits when its
# control socket closes (the host process closed the scorer or died); workers carry
# PR_SET_PDEATHSIG=SIGKILL, so they die with the zygote even when stuck inside a sympy computation.


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


def _worker_loop(conn: Connection) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        idx, response, reference = msg
        try:
            s = score_one(response, reference)
        except Exception:  # RecursionError, MemoryError, sympy internals: reward 0
            s = Score(0.0, False, "", False)
        try:
            conn.send((idx, s.reward, s.correct, s.extracted_answer))
        except (EOFError, OSError):
            return


def _zygote_main(fd: int) -> None:
    """Entry point of the zygote subprocess (see above)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped automatically
    ctl = Connection(fd)
    zygote_pid = os.getpid()
    try:
        score_one("The answer is \\boxed{\\frac{1}{2}}", "0.5")  # warm imports and regex caches
    except Exception:  # pragma: no cover
        pass
    ctl.send("ready")
    while True:
        try:
            wfd = recv_handle(ctl)
        except Exception:  # control socket closed: the host is gone or closed the scorer
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ctl.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _set_parent_death_signal()
                if os.getppid() == zygote_pid:
                    _worker_loop(Connection(wfd))
            except BaseException:  # pragma: no cover
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        ctl.send(pid)


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class _Zygote:
    def __init__(self):
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        code = (
            f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
            f"from vespo_cli.rewards import _zygote_main; _zygote_main({fd})"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=[fd], stdin=subprocess.DEVNULL, close_fds=True
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.ready = False

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"reward scorer: worker process did not start within {timeout_s:.0f} s")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.wait()
            raise RuntimeError(f"reward scorer: the worker process exited while starting (exit code {code})") from None
        if msg != "ready":  # pragma: no cover
            raise RuntimeError(f"reward scorer: unexpected message {msg!r} from the worker process")
        self.ready = True

    def fork(self, timeout_s: float) -> "_Worker":
        ours, theirs = socket.socketpair()
        try:
            send_handle(self.conn, theirs.fileno(), self.proc.pid)
        finally:
            theirs.close()
        if not self.conn.poll(timeout_s):
            raise RuntimeError("reward scorer: the worker process did not fork")
        pid = self.conn.recv()
        return _Worker(Connection(ours.detach()), pid)

    def close(self) -> None:
        self.conn.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()


class _Worker:
    def __init__(self, conn: Connection, pid: int):
        self.conn = conn
        self.pid = pid
        self.task: tuple[int, float] | None = None  # (sample index, deadline)

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.conn.close()


class RewardScorer:
    """A pool of scoring processes kept alive across `score()` calls (one call per training step).

    Each sample gets `timeout_s` seconds of wall-clock time in a worker; a worker that overruns is
    killed and replaced, and the sample scores 0 with `timed_out=True`. A worker that dies otherwise
    (OOM kill, segfault) is replaced and its sample retried once. Usable from any thread (calls are
    serialized). Processes start lazily on the first `score()` (or `start()`), ~2 s."""

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, startup_timeout_s: float = 120.0):
        if workers < 1:
            raise ValueError("RewardScorer: workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("RewardScorer: timeout_s must be > 0")
        self.num_workers = int(workers)
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._workers: list[_Worker] = []
        self._closed = False
        self.stats = {"scored": 0, "timed_out": 0, "crashed": 0, "restarts": 0}

    # -- lifecycle
    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "RewardScorer":
        """Start the worker processes now (otherwise the first `score()` does)."""
        with self._lock:
            self._ensure_started()
        return self

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("RewardScorer is closed")
        if self._zygote is None or self._zygote.proc.poll() is not None:
            self._zygote = _Zygote()
        self._zygote.wait_ready(self.startup_timeout_s)
        for i in range(self.num_workers):
            if i >= len(self._workers):
                self._workers.append(self._fork())

    def _fork(self) -> _Worker:
        assert self._zygote is not None
        try:
            return self._zygote.fork(self.startup_timeout_s)
        except (OSError, EOFError):  # the zygote died: start another one
            self._zygote.close()
            self._zygote = _Zygote()
            self._zygote.wait_ready(self.startup_timeout_s)
            return self._zygote.fork(self.startup_timeout_s)

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = self._fork()
        self.stats["restarts"] += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            if w.task is not None:
                w.kill()
            else:
                w.conn.close()  # the worker sees EOF and exits
        self._workers = []
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- scoring
    def score(self, responses: list[str], references: list[str]) -> list[Score]:
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        tails = [r[-MAX_RESPONSE_CHARS:] for r in responses]
        with self._lock:
            self._ensure_started()
            return self._run(tails, [str(r) for r in references])

    def _run(self, tails: list[str], refs: list[str]) -> list[Score]:
        results: list[Score | None] = [None] * len(tails)
        pending = deque(range(len(tails)))
        retried: set[int] = set()
        outstanding = len(tails)
        while outstanding:
            for i, w in enumerate(self._workers):
                if w.task is None and pending:
                    idx = pending.popleft()
                    try:
                        w.conn.send((idx, tails[idx], refs[idx]))
                    except OSError:  # died while idle
                        pending.appendleft(idx)
                        self._replace(i)
                        continue
                    w.task = (idx, time.monotonic() + self.timeout_s)
            busy = {w.conn: i for i, w in enumerate(self._workers) if w.task is not None}
            if not busy:  # every worker was found dead and replaced: dispatch again
                continue
            next_deadline = min(self._workers[i].task[1] for i in busy.values())  # type: ignore[index]
            for conn in wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic())):
                i = busy[conn]
                w = self._workers[i]
                idx = w.task[0]  # type: ignore[index]
                try:
                    _, reward, correct, extracted = conn.recv()
                except (EOFError, OSError):  # died mid-task (OOM kill, segfault): retry once
                    w.task = None
                    self.stats["crashed"] += 1
                    log.warning("reward worker %d died while scoring sample %d; %s", w.pid, idx,
                                "giving it reward 0" if idx in retried else "retrying it once")
                    self._replace(i)
                    if idx in retried:
                        results[idx] = Score(0.0, False, extract_answer(tails[idx]) or "", False)
                        outstanding -= 1
                    else:
                        retried.add(idx)
                        pending.appendleft(idx)
                    continue
                results[idx] = Score(reward, correct, extracted, False)
                w.task = None
                outstanding -= 1
                self.stats["scored"] += 1
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.task is not None and now >= w.task[1]:
                    idx = w.task[0]
                    results[idx] = Score(0.0, False, extract_answer(tails[idx]) or "", True)
                    outstanding -= 1
                    w.task = None
                    self.stats["timed_out"] += 1
                    self._replace(i)
        return results  # type: ignore[return-value]
