"""The scoring pool: math-verify in killable worker processes, with a wall-clock limit per sample.

math-verify bounds its own work with `signal.alarm`, which fails outside the main thread and cannot
stop a long C-level sympy computation (`9^9^9^9`). So `RewardScorer` scores in worker processes with
math-verify's timeouts disabled and enforces its own per-sample wall-clock limit by killing the worker
that overruns and starting a replacement (reward 0, `timed_out=True`). An exception inside a worker
is not hidden: the sample scores 0 with `error` set to the exception's type, the scorer counts it and
logs the first of each type.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path

from .extract import FALLBACKS, MAX_RESPONSE_CHARS, Fallback, extract_answer
from .score import Score, score_one

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ worker pool
#
# One "zygote" subprocess imports math-verify once (slow: sympy and the LaTeX grammar) and then only
# forks warm scoring workers on request, so a worker killed for overrunning is replaced at once. A plain subprocess (not
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
        idx, response, reference, fallback, question = msg
        try:
            s = score_one(response, reference, fallback, question)
        except Exception as e:  # RecursionError, MemoryError, sympy internals: reward 0, reported
            s = Score(0.0, False, "", False, error=f"{type(e).__name__}: {str(e)[:200]}")
        try:
            conn.send((idx, s.reward, s.correct, s.extracted_answer, s.error))
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


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _Zygote:
    def __init__(self):
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        code = (
            f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
            f"from vespo_cli.rewards.pool import _zygote_main; _zygote_main({fd})"
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

    def fork(self, timeout_s: float) -> _Worker:
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
    serialized). Processes start lazily on the first `score()` (or `start()`).

    `fallback` is the extraction policy's opt-in last rule (`extract.py`). `stats` counts over the
    scorer's life; each `Score` says whether it timed out or raised (`error`)."""

    def __init__(
        self, workers: int = 2, timeout_s: float = 5.0, startup_timeout_s: float = 120.0, fallback: Fallback = "none"
    ):
        if fallback not in FALLBACKS:
            raise ValueError(f"RewardScorer: fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.fallback = fallback
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
        self.stats = {"scored": 0, "timed_out": 0, "crashed": 0, "errors": 0, "restarts": 0}
        self._logged: set[str] = set()  # exception types already logged

    # -- lifecycle
    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> RewardScorer:
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
    def score(self, responses: list[str], references: list[str], questions: list[str] | None = None) -> list[Score]:
        """Scores of `responses` against `references`; with `questions`, answers copied from the
        question are not paid."""
        questions = [""] * len(responses) if questions is None else questions
        if not len(responses) == len(references) == len(questions):
            raise ValueError(f"{len(responses)} responses, {len(references)} references, {len(questions)} questions")
        tails = [r[-MAX_RESPONSE_CHARS:] for r in responses]
        with self._lock:
            self._ensure_started()
            return self._run(tails, [str(r) for r in references], [str(q) for q in questions])

    def _run(self, tails: list[str], refs: list[str], questions: list[str]) -> list[Score]:
        results: list[Score | None] = [None] * len(tails)
        pending = deque(range(len(tails)))
        retried: set[int] = set()
        outstanding = len(tails)
        while outstanding:
            for i, w in enumerate(self._workers):
                if w.task is None and pending:
                    idx = pending.popleft()
                    try:
                        w.conn.send((idx, tails[idx], refs[idx], self.fallback, questions[idx]))
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
                    _, reward, correct, extracted, error = conn.recv()
                except (EOFError, OSError):  # died mid-task (OOM kill, segfault): retry once
                    w.task = None
                    self.stats["crashed"] += 1
                    log.warning(
                        "reward worker %d died while scoring sample %d; %s",
                        w.pid,
                        idx,
                        "giving it reward 0" if idx in retried else "retrying it once",
                    )
                    self._replace(i)
                    if idx in retried:
                        results[idx] = Score(
                            0.0, False, self._extract(tails[idx], questions[idx]), False, error="WorkerCrashed"
                        )
                        self._count_error("WorkerCrashed: the scoring process died twice on this sample")
                        outstanding -= 1
                    else:
                        retried.add(idx)
                        pending.appendleft(idx)
                    continue
                results[idx] = Score(reward, correct, extracted, False, error)
                w.task = None
                outstanding -= 1
                self.stats["scored"] += 1
                if error:
                    self._count_error(error)
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.task is not None and now >= w.task[1]:
                    idx = w.task[0]
                    results[idx] = Score(0.0, False, self._extract(tails[idx], questions[idx]), True)
                    outstanding -= 1
                    w.task = None
                    self.stats["timed_out"] += 1
                    self._replace(i)
        return results  # type: ignore[return-value]

    def _extract(self, tail: str, question: str) -> str:
        try:
            return extract_answer(tail, self.fallback, question) or ""
        except Exception:  # pragma: no cover - extraction is linear-time regex work
            return ""

    def _count_error(self, error: str) -> None:
        self.stats["errors"] += 1
        kind = error.split(":", 1)[0]
        if kind not in self._logged:  # once per exception type: a broken grader is seen, not spammed
            self._logged.add(kind)
            log.warning("reward scoring raised %s (the sample gets reward 0; counted as reward_errors)", error)
