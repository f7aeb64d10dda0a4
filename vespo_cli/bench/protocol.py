"""Bench subprocesses: a section (`python -m vespo_cli.bench section NAME OUT`, run to completion) and a
worker (`python -m vespo_cli.bench worker KIND CMD_FD RES_FD`) driven over two pipes, one JSON line each
way: the worker sends its setup record, then answers each "step" with a step record and "stop" with
its peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .machine import bench_env
from .memory import PeakRSS
from .sizes import bench_config, sizes


def log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class WorkerError(RuntimeError):
    """A worker exited before answering; `.tail` is the end of its log."""

    def __init__(self, msg: str, tail: str, log: Path | None = None):
        super().__init__(msg + "\n" + tail)
        self.tail = tail
        self.log = log


TRL_PYTHON_ENV = "VESPO_BENCH_TRL_PYTHON"  # the interpreter of TRL's vLLM side (`make bench-trl-env`: .venv-trl)


def worker_python(kind: str) -> str:
    """The interpreter a worker runs in: TRL's vLLM colocate side in its own venv where one is given (TRL 1.16
    supports vLLM <= 0.31; vespo's venv has 0.32), every other worker in this one."""
    override = os.environ.get(TRL_PYTHON_ENV, "")
    # absolute (not resolved: a venv's python is a symlink whose own path finds the venv), since workers run in logdir
    return os.path.abspath(override) if kind == "trl-vllm" and override else sys.executable


class Worker:
    """The parent's end of a worker subprocess."""

    def __init__(self, kind: str, quick: bool, logdir: Path, tag: str = ""):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        self.kind = kind
        self.log = logdir / f"{kind}{tag}.log"
        argv = [worker_python(kind), "-m", "vespo_cli.bench", "worker", kind, str(cmd_r), str(res_w)]
        argv += ["--quick"] if quick else []
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, pass_fds=(cmd_r, res_w), env=bench_env(), cwd=str(logdir)
            )
        os.close(cmd_r)
        os.close(res_w)
        self._out = os.fdopen(self._cmd_w, "w", buffering=1)
        self._in = os.fdopen(self._res_r, "r")

    def recv(self) -> dict:
        line = self._in.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(
                f"bench worker {self.kind} exited ({self.proc.returncode}); log {self.log}:",
                log_tail(self.log),
                self.log,
            )
        return json.loads(line)

    def send(self, cmd: str) -> None:
        try:
            self._out.write(cmd + "\n")
            self._out.flush()
        except BrokenPipeError:
            pass  # the worker is gone; recv says why

    def ask(self, cmd: str) -> dict:
        self.send(cmd)
        return self.recv()

    def close(self) -> None:
        for f in (self._out, self._in):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def child_protocol(argv: list[str]):
    """The worker's end: (command file, send(obj))."""
    cmd = os.fdopen(int(argv[0]), "r")
    res = os.fdopen(int(argv[1]), "w", buffering=1)

    def send(obj: dict) -> None:
        res.write(json.dumps(obj) + "\n")
        res.flush()

    return cmd, send


class WorkerSide:
    """What both e2e workers (worker_vespo, worker_trl) hold: the protocol's pipes, peak RSS from here
    on, the workload sizes and the vespo configuration for `engine`; and the records they send."""

    def __init__(self, argv: list[str], quick: bool, engine: str):
        self.cmds, self.send = child_protocol(argv)
        self.rss = PeakRSS()
        self.sz = sizes(quick)
        self.cfg = bench_config(self.sz, engine)
        self.engine = engine

    def wants_step(self) -> bool:
        """Wait for the parent's next command: True on "step" ("stop", or the pipe closed: False)."""
        return self.cmds.readline().strip() == "step"

    def send_setup(self, t0: float, **extra) -> None:
        """The setup record: seconds since `t0` (perf_counter), torch's threads, then `extra`."""
        import torch

        self.send({"setup_s": time.perf_counter() - t0, "threads": torch.get_num_threads(), **extra})

    def send_step(self, record: dict) -> None:
        """A step record, with the machine's 1-minute load average last."""
        self.send({**record, "load_avg": os.getloadavg()[0]})

    def send_peak_rss(self) -> None:
        """The last record: peak RSS of the worker's process tree (and of its main process)."""
        self.send(self.rss.report())


def run_section(name: str, quick: bool, logdir: Path) -> dict:
    """`python -m vespo_cli.bench section NAME` in a subprocess; its JSON result."""
    result = logdir / f"{name}.json"
    log = logdir / f"{name}.log"
    argv = [sys.executable, "-m", "vespo_cli.bench", "section", name, str(result)] + (["--quick"] if quick else [])
    with open(log, "wb") as fh:
        rc = subprocess.call(argv, stdout=fh, stderr=subprocess.STDOUT, env=bench_env(), cwd=str(logdir))
    if rc != 0 or not result.is_file():
        raise RuntimeError(f"bench section {name} failed (exit {rc}); log {log}:\n{log_tail(log)}")
    return json.loads(result.read_text())
