#!/usr/bin/env python
"""Every fault case of issue 19, each in its own process with a timeout → reports/reliability.md.

    .venv/bin/python reports/reliability/run.py            # all cases (~15 min on 2 loaded cores)
    .venv/bin/python reports/reliability/run.py --quick    # a few cases per category
    .venv/bin/python reports/reliability/run.py --quick --only config,yaml --out /tmp/r.md --json /tmp/r.json

Each case runs the `vespo` command line in a process of its own: forked from this script after it
imported vespo (so a case costs milliseconds, not the seconds of importing torch), with its own
stdout/stderr files, a timeout (then SIGKILL of its process group: a hang) and an address-space limit
(an absurd size fails there, not on the machine). The kill -9 and two-writer cases start real
`python -m vespo_cli.cli` processes. A case is *clean* when it ends as expected:

* bad input: exit 2, one `error:` line naming the file, key or value, no traceback, nothing written;
* a fault of the machine: exit 1, one line naming the path;
* acceptable input (a value in range, an intact file): exit 0 and a correct result, checked against
  an uninterrupted reference run (weights bit for bit, metrics, the consumed-shard ledger).

Otherwise it is counted as a traceback, a hang, a silent wrong result (exit 0 with a wrong result, or
bad input accepted), or "other" (wrong exit code, an error line that does not name the culprit, a
crash). Samples lost / reused compare the ledger (or a rollout's prompt ids) with the reference.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}
os.environ.update(ENV)
os.environ.pop("VESPO_DEBUG", None)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import vespo_cli.cli as cli  # noqa: E402
import vespo_cli.train.loop  # noqa: E402,F401  (imported once here: every forked case starts warm)
from vespo_cli.config import Config  # noqa: E402
from vespo_cli.objectives import PARAMS  # noqa: E402
from vespo_cli.schema import bounds, numeric_fields  # noqa: E402

MEM_LIMIT = 12 * 2**30  # address space of one case
OUTCOMES = ("clean", "traceback", "hang", "silent wrong", "other")


# --------------------------------------------------------------------------- running one process


@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    secs: float
    hung: bool = False

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]


def _child(target: Callable[[], None], out: Path, err: Path, cwd: Path) -> None:
    code = 1
    try:
        os.setsid()
        os.chdir(cwd)
        for fd, p in ((1, out), (2, err)):
            f = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
        try:
            target()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def fork_run(target: Callable[[], None], cwd: Path, timeout: float) -> Result:
    """Run `target` in a forked process (its own session); SIGKILL its group after `timeout` s."""
    cwd.mkdir(parents=True, exist_ok=True)
    fd, out = tempfile.mkstemp(prefix="out-", dir=WORK)
    os.close(fd)
    err = Path(out).with_name(Path(out).name.replace("out-", "err-"))
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(target, Path(out), err, cwd)
    hung, status = False, None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > timeout:
            hung = True
            _killpg(pid)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    _killpg(pid)  # what it started (reward workers, async workers) goes with it
    rc = None if hung else os.waitstatus_to_exitcode(status)
    text = [Path(p).read_text(errors="replace") if Path(p).exists() else "" for p in (out, err)]
    for p in (out, err):
        Path(p).unlink(missing_ok=True)
    return Result(rc, text[0], text[1], time.monotonic() - t0, hung)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def vespo(args: list[str], cwd: Path | None = None, timeout: float = 60) -> Result:
    """`vespo ARGS` in a forked process."""

    def target() -> None:
        sys.argv = ["vespo", *map(str, args)]
        cli.main()

    return fork_run(target, cwd or WORK, timeout)


def call(fn: Callable[[], None], timeout: float = 120) -> None:
    """Run a preparation step in a forked process (keeps torch and arrow threads out of this one)."""
    r = fork_run(fn, WORK, timeout)
    if r.rc != 0:
        raise RuntimeError(f"preparation failed (rc {r.rc}):\n{r.err[-3000:]}")


def popen_vespo(args: list[str], log: Path) -> subprocess.Popen:
    """A real `python -m vespo_cli.cli` process (for kill -9 and two writers)."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vespo_cli.cli", *map(str, args)],
            cwd=ROOT,
            env={**os.environ, **ENV},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _STARTED.append(proc)
    return proc


_STARTED: list[subprocess.Popen] = []


@atexit.register
def _stop_started() -> None:
    """No process this script started outlives it (the live writer, a kill case cut short)."""
    for proc in _STARTED:
        if proc.poll() is None:
            _killpg(proc.pid)
            proc.wait()


# --------------------------------------------------------------------------- judging


@dataclass
class Case:
    category: str
    name: str
    run: Callable[[Path], tuple[Result, str | None, tuple[int, int]]]  # → result, wrong (None = right), (lost, reused)
    expect: tuple[str, ...] = ("refuse",)  # refuse (exit 2) | env (exit 1) | ok (exit 0)
    mention: str | tuple[str, ...] = ""  # what the error line must name (any of)
    quick: bool = False


@dataclass
class Outcome:
    case: Case
    outcome: str
    detail: str
    secs: float
    lost: int = 0
    reused: int = 0
    rc: int | None = None
    message: str = ""


def judge(case: Case, r: Result, wrong: str | None) -> tuple[str, str]:
    if r.hung:
        return "hang", f"no exit within {r.secs:.0f} s"
    if "Traceback (most recent call last)" in r.err + r.out:
        last = [ln for ln in r.err.splitlines() if ln.strip()][-1:] or ["?"]
        return "traceback", last[0][:200]
    if r.rc == 0:
        if "ok" not in case.expect:
            return "silent wrong", "bad input accepted (exit 0)"
        if wrong:
            return "silent wrong", wrong
        return "clean", "exit 0, result checked"
    want = {"refuse": 2, "env": 1}
    codes = {want[e] for e in case.expect if e in want}
    errs = r.errors
    if len(errs) != 1:
        return "other", f"exit {r.rc} with {len(errs)} error lines: {r.err.strip()[-200:]!r}"
    if r.rc not in codes:
        return "other", f"exit {r.rc}, expected {sorted(codes) or 0}: {errs[0][:200]}"
    mentions = (case.mention,) if isinstance(case.mention, str) else case.mention
    if not any(m in errs[0] for m in mentions):
        return "other", f"the error does not name {' or '.join(mentions)}: {errs[0][:200]}"
    if wrong:
        return "silent wrong", wrong
    return "clean", errs[0][len("error: ") :][:240]


def run_case(case: Case) -> Outcome:
    d = WORK / "cases" / f"{len(list((WORK / 'cases').glob('*')))}"
    d.mkdir(parents=True)
    try:
        r, wrong, (lost, reused) = case.run(d)
    except Exception as e:  # the harness's own failure is reported, not hidden
        return Outcome(case, "other", f"harness: {type(e).__name__}: {e}", 0.0)
    finally:
        if not KEEP:
            shutil.rmtree(d, ignore_errors=True)
    outcome, detail = judge(case, r, wrong)
    return Outcome(case, outcome, detail, r.secs, lost, reused, r.rc, (r.errors or [""])[0])


# --------------------------------------------------------------------------- fixtures (prepared once)

WORK = Path(tempfile.mkdtemp(prefix="vespo-reliability-"))
KEEP = False
_FIX: dict[str, Path] = {}


def fixture(name: str) -> Path:
    if name not in _FIX:
        t0 = time.monotonic()
        _FIX[name] = FIXTURES[name]()
        print(f"  fixture {name}: {time.monotonic() - t0:.0f} s", flush=True)
    return _FIX[name]


def _must(r: Result, what: str) -> None:
    if r.rc != 0:
        raise RuntimeError(f"{what} failed (rc {r.rc}):\n{r.err[-3000:]}")


def fx_shards() -> Path:
    """8 prompt groups in 4 shards from the tiny model, with random 0/1 rewards (non-zero gradients)."""
    roll, out = WORK / "fx-roll", WORK / "fx-shards"
    for d in (roll, out):
        shutil.rmtree(d, ignore_errors=True)
    _must(vespo(["rollout", "--preset", "tiny", "--num-prompts", "8", "--run-dir", roll], timeout=600), "rollout")

    def redraw() -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import redraw_rewards

        out.mkdir()
        redraw_rewards(roll / "rollouts", out, seed=1)

    call(redraw)
    return out


REPLAY_SMALL = ["--set", "trainer.steps=2", "--set", "trainer.staleness=1", "--set", "trainer.save_every=1"]


def fx_rref() -> Path:
    """Replay reference: 4 steps, N = 2, checkpoints at steps 2 and 4 (tiny preset)."""
    run = WORK / "fx-rref"
    shutil.rmtree(run, ignore_errors=True)
    _must(vespo(["train", "--preset", "tiny", "--replay", fixture("shards"), "--run-dir", run], timeout=600), "rref")
    return run


FIXTURES = {"shards": fx_shards, "rref": fx_rref}

BIG = {".safetensors", ".pt", ".parquet"}


def copy_run(src: Path, dst: Path, drop_steps: tuple[int, ...] = ()) -> Path:
    """A copy of a run directory: large binaries hard-linked (vespo replaces them, never writes into
    them), everything else copied; `drop_steps` checkpoints left out (as if killed after the one before)."""

    def copy(s, d):
        if Path(s).suffix in BIG:
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns(".vespo.lock"))
    for k in drop_steps:
        shutil.rmtree(dst / "checkpoints" / f"step-{k}")
    return dst


def unlink_copy(p: Path) -> None:
    """Make `p` a file of its own before writing into it (it may be a hard link into a fixture)."""
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data)


def flip(p: Path, offset: int, bit: int) -> None:
    unlink_copy(p)
    with open(p, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


# --------------------------------------------------------------------------- comparing with a reference


def metrics(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("kind") == "train":
            out.append({k: v for k, v in r.items() if not k.endswith("_s") and k not in ("time", "tokens_per_s")})
    return out


def weights(ckpt: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(ckpt / "model.safetensors"))


def ledger(run: Path) -> list[dict]:
    """The consumed-shard ledger of the run's newest checkpoint (one with a manifest: vespo's own)."""
    steps = sorted(
        (int(p.name.split("-")[1]), p)
        for p in (run / "checkpoints").glob("step-*")
        if p.name[5:].isdigit() and (p / "manifest.json").is_file()
    )
    if not steps:
        return []
    return json.loads((steps[-1][1] / "trainer_state.json").read_text()).get("ledger", [])


def ledger_rows(entries: list[dict]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for e in entries:
        key = e.get("sha256") or e.get("shard")
        rows[key] = rows.get(key, 0) + int(e.get("rows", 0))
    return rows


def lost_reused(run: Path, ref: Path) -> tuple[int, int]:
    got, want = ledger_rows(ledger(run)), ledger_rows(ledger(ref))
    lost = sum(max(0, n - got.get(k, 0)) for k, n in want.items())
    reused = sum(max(0, n - want.get(k, 0)) for k, n in got.items())
    return lost, reused


def same_as(run: Path, ref: Path, warned: str = "", ignore: tuple[str, ...] = ()) -> str | None:
    """None when `run` ended where the uninterrupted `ref` did: final weights bit for bit, metrics
    (metrics lines lost count as right only where the run warned about them: `warned` has a warning
    naming metrics.jsonl)."""
    last = max((int(p.name.split("-")[1]) for p in (ref / "checkpoints").glob("step-*")), default=None)
    a, b = run / "checkpoints" / f"step-{last}", ref / "checkpoints" / f"step-{last}"
    if not (a / "model.safetensors").exists():
        return f"no checkpoint step-{last} after the run"
    wa, wb = weights(a), weights(b)
    if wa.keys() != wb.keys() or any(not np.array_equal(wa[k], wb[k]) for k in wb):
        return f"step-{last} weights differ from the uninterrupted run"
    ma, mb = ([{k: v for k, v in m.items() if k not in ignore} for m in metrics(r)] for r in (run, ref))
    if ma != mb and any("warning" in ln and "metrics.jsonl" in ln for ln in warned.splitlines()):
        return None
    if [m["step"] for m in ma] != [m["step"] for m in mb]:
        return f"metrics steps {[m['step'] for m in ma]} != {[m['step'] for m in mb]}"
    if ma != mb:
        return "metrics differ from the uninterrupted run"
    return None


def finite_weights(run: Path) -> str | None:
    ck = sorted((run / "checkpoints").glob("step-*"))
    if not ck:
        return "no checkpoint written"
    for k, v in weights(ck[-1]).items():
        if not np.isfinite(v).all():
            return f"non-finite weights in {ck[-1].name}/{k}"
    return None


# --------------------------------------------------------------------------- categories


def nothing_written(path: Path) -> str | None:
    if (path / "config.yaml").exists() or (path / "metrics.jsonl").exists():
        return f"a refused command wrote into {path}"
    return None


def cat_config(quick: bool) -> list[Case]:
    """Every numeric config key (read off the pydantic models, every objective's params included) ×
    {nan, inf, -1, huge}."""
    keys = [(k, tp, meta, []) for k, tp, meta in numeric_fields(Config)]
    for name, model in PARAMS.items():
        keys += [
            (k, tp, meta, [f"algorithm.objective={name}"]) for k, tp, meta in numeric_fields(model, "algorithm.params.")
        ]
    lists = {"trainer.betas"}
    cases = []
    for i, (key, tp, meta, pre) in enumerate(keys):
        lo, lo_in, hi, hi_in = bounds(meta)
        huge = "1000000000000000000000000000000" if tp is int else "1.0e+300"
        for j, (label, text, value) in enumerate(
            [("nan", ".nan", float("nan")), ("inf", ".inf", float("inf")), ("-1", "-1", -1), ("huge", huge, 1e30)]
        ):
            item = f"{key}=[{text}, 0.5]" if key in lists else f"{key}={text}"
            in_range = (
                value == value
                and lo is not None
                and hi is not None
                and (lo <= value if lo_in else lo < value)
                and (value <= hi if hi_in else value < hi)
            )
            cases.append(
                Case(
                    "config",
                    f"--set {item}",
                    _config_run([*pre, item], in_range),
                    expect=("ok",) if in_range else ("refuse",),
                    mention=key,
                    quick=(i % 12 == 0 and j in (0, 3)) or in_range,
                )
            )
    return cases + _boundary_cases()


def _boundary_cases() -> list[Case]:
    """Values at the declared maximum that reach the engine (a huge seed overflowed deep inside it)."""
    from vespo_cli.config import SEED_MAX

    return [
        Case(
            "config",
            f"--set trainer.seed={SEED_MAX} (the maximum)",
            _config_run([f"trainer.seed={SEED_MAX}"], True),
            ("ok",),
        )
    ]


def _config_run(sets: list[str], in_range: bool):
    def run(d: Path):
        args = ["train", "--preset", "tiny", *[x for s in sets for x in ("--set", s)], "--run-dir", d / "run"]
        if not in_range:
            r = vespo(args, timeout=60)
            return r, nothing_written(d / "run"), (0, 0)
        r = vespo([*args, "--set", "trainer.steps=2"], timeout=300)  # sync: sampling and training both see it
        return r, (finite_weights(d / "run") if r.rc == 0 else None), (0, 0)

    return run


def cat_shard_flips(quick: bool) -> list[Case]:
    """Single-bit flips at many offsets of a shard: `vespo inspect` must name the file; one flip
    consumed by `train --replay` must be skipped by name and the rest trained."""
    src = sorted(fixture("shards").glob("*.parquet"))[0]
    size = src.stat().st_size
    n = 6 if quick else 48
    offsets = sorted({0, 3, size - 1, size - 5, size - 8} | {int(size * (k + 0.5) / n) for k in range(n)})
    if quick:
        offsets = offsets[:: max(1, len(offsets) // 5)]
    cases = []
    for k, off in enumerate(offsets):
        bit = k % 8

        def run(d: Path, off=off, bit=bit):
            p = d / "rollouts" / src.name
            p.parent.mkdir(parents=True)
            shutil.copy2(src, p)
            flip(p, off, bit)
            return vespo(["inspect", p], timeout=60), None, (0, 0)

        cases.append(Case("shard bit flips", f"inspect: byte {off} bit {bit} of {size}", run, mention=src.name))

    def replay(d: Path):
        shards = d / "shards"
        shutil.copytree(fixture("shards"), shards)
        p = shards / src.name
        flip(p, size // 2, 3)
        r = vespo(["train", "--preset", "tiny", "--replay", shards, *REPLAY_SMALL, "--run-dir", d / "run"], timeout=300)
        used = {e["shard"] for e in ledger(d / "run")} if r.rc == 0 else set()
        wrong = None
        if r.rc == 0 and (src.name in used or src.stem in used):
            wrong = "the flipped shard was trained on"
        elif r.rc == 0 and src.name not in r.err:
            wrong = "the flipped shard was skipped without naming it"
        return r, wrong, (0, 0)

    cases.append(Case("shard bit flips", f"train --replay: byte {size // 2} flipped", replay, ("ok",), quick=True))
    for c in cases[:3]:
        c.quick = True
    return cases


CKPT_FILES = ["model.safetensors", "optim.pt", "trainer_state.json", "manifest.json", "config.json", "vespo.json",
              "tokenizer.json", "generation_config.json"]  # fmt: skip


def cat_ckpt_flips(quick: bool) -> list[Case]:
    """Single-bit flips in the files of the only checkpoint (step 2) of a run killed before step 4:
    `train --resume` must refuse, naming the file; with an older good checkpoint (a flip in step 4,
    step 2 intact) it must name the bad one, resume from step 2 and end bit for bit where the
    uninterrupted run did."""
    rref = fixture("rref")
    ck = rref / "checkpoints" / "step-2"
    cases = []
    for f in CKPT_FILES:
        size = (ck / f).stat().st_size
        n = 1 if quick else (6 if f in ("model.safetensors", "optim.pt") else 3)
        for k in range(n):
            off = [0, 9, size // 2, size - 1, size // 7, size // 3][k] if n > 1 else size // 2
            bit = (k * 3 + 1) % 8

            def run(d: Path, f=f, off=off, bit=bit):
                run_dir = copy_run(rref, d / "run", drop_steps=(4,))
                flip(run_dir / "checkpoints" / "step-2" / f, off, bit)
                return vespo(["train", "--resume", run_dir], timeout=120), None, (0, 0)

            mention = (f, "manifest.json") if f == "manifest.json" else f
            cases.append(Case("checkpoint bit flips", f"{f}: byte {off} bit {bit}", run, mention=mention, quick=quick))

    for f in ["model.safetensors", "trainer_state.json"][: 1 if quick else 2]:

        def fallback(d: Path, f=f):
            run_dir = copy_run(rref, d / "run")
            p = run_dir / "checkpoints" / "step-4" / f
            flip(p, p.stat().st_size // 2, 5)
            r = vespo(["train", "--resume", run_dir], timeout=300)
            wrong = None
            if r.rc == 0:
                wrong = same_as(run_dir, rref) or (None if f in r.err else f"the corrupt {f} was not named")
            return r, wrong, lost_reused(run_dir, rref) if r.rc == 0 else (0, 0)

        name = f"step-4/{f} flipped, step-2 good: named, resumed from step 2, exact"
        cases.append(Case("checkpoint bit flips", name, fallback, ("ok",), quick=True))
    return cases


def _garbage(kind: str, f: str) -> bytes | None:
    return {
        "missing": None,
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
        "wrong type": {
            ".json": b'["not", "an", "object"]\n',
            ".yaml": b"- a list\n- not a mapping\n",
            ".jsonl": b'[1, 2]\n"text"\n{"step": "one", "kind": "train"}\n',
        }.get(Path(f).suffix, b'{"a": "json file, not safetensors"}\n'),
    }[kind]


def cat_run_files(quick: bool) -> list[Case]:
    """Every file a resume reads × {missing, empty, garbage, wrong type}: the run's own files on a
    finished run, the checkpoint's on a run killed before its step-4 checkpoint (step 2 is the only
    one). Refused naming the file, or resumed to the reference result (a lost metrics line: with a
    warning naming metrics.jsonl; a missing manifest or inputs.json: a run of an older vespo)."""
    rref = fixture("rref")
    files = {
        "config.yaml": ("config.yaml", ()),
        "run.json": ("run.json", ()),
        "metrics.jsonl": ("metrics.jsonl", ()),
        "inputs.json": ("inputs.json", ()),
        "checkpoints/step-2/trainer_state.json": ("trainer_state.json", (4,)),
        "checkpoints/step-2/model.safetensors": ("model.safetensors", (4,)),
        "checkpoints/step-2/manifest.json": ("manifest.json", (4,)),
        "checkpoints/step-2/optim.pt": ("optim.pt", (4,)),
    }
    cases = []
    for i, (rel, (name, drop)) in enumerate(files.items()):
        for j, kind in enumerate(("missing", "empty", "garbage", "wrong type")):

            def run(d: Path, rel=rel, kind=kind, drop=drop):
                run_dir = copy_run(rref, d / "run", drop_steps=drop)
                p = run_dir / rel
                if not p.exists() and rel == "inputs.json":
                    raise FileNotFoundError(f"{rel}: not written by this vespo (item 4 not in the tree)")
                data = _garbage(kind, rel)
                p.unlink()
                if data is not None:
                    p.write_bytes(data)
                r = vespo(["train", "--resume", run_dir], timeout=300)
                if r.rc != 0:
                    return r, None, (0, 0)
                return r, same_as(run_dir, rref, warned=r.err), lost_reused(run_dir, rref)

            accepted = name == "metrics.jsonl" or (kind == "missing" and name in ("manifest.json", "inputs.json"))
            ok = ("ok", "refuse") if accepted else ("refuse",)
            cases.append(Case("run files", f"{rel} {kind}", run, ok, mention=name, quick=(i + j) % 4 == 0))
    return cases


def cat_two_writers(quick: bool) -> list[Case]:
    """A live `vespo train` holds its run directory: a second train, a resume and a rollout into it
    are refused naming the holder's PID."""
    holder: dict = {}

    def live(d: Path) -> tuple[Path, int]:
        if "proc" not in holder or holder["proc"].poll() is not None:
            run = WORK / "live-run"
            shutil.rmtree(run, ignore_errors=True)
            proc = popen_vespo(
                ["train", "--preset", "tiny", "--replay", fixture("shards"), "--set", "trainer.steps=100000",
                 "--set", "trainer.save_every=1000", "--run-dir", run],
                WORK / "live.log",
            )  # fmt: skip
            t0 = time.monotonic()
            while not (run / "metrics.jsonl").exists():
                if proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise RuntimeError(f"the live run did not start: {(WORK / 'live.log').read_text()[-2000:]}")
                time.sleep(0.2)
            holder.update(proc=proc, run=run)
        return holder["run"], holder["proc"].pid

    variants = {
        "train --resume": lambda run: ["train", "--resume", run],
        "train (new run, same dir)": lambda run: ["train", "--preset", "tiny", "--run-dir", run],
        "rollout into it": lambda run: ["rollout", "--preset", "tiny", "--num-prompts", "2", "--run-dir", run],
        "train --replay into it": lambda run: [
            "train",
            "--preset",
            "tiny",
            "--replay",
            fixture("shards"),
            "--run-dir",
            run,
        ],
    }
    cases = []
    for name, argv in variants.items():

        def run(d: Path, argv=argv):
            run_dir, pid = live(d)
            before = metrics(run_dir)
            r = vespo(argv(run_dir), timeout=120)
            after = metrics(run_dir)
            steps = [m["step"] for m in after]
            wrong = None if steps == sorted(set(steps)) and len(after) >= len(before) else f"metrics steps {steps}"
            return r, wrong, (0, 0)

        pid_mention = ("pid ",) if name == "train --resume" else ("pid ", "already holds a run")
        cases.append(Case("two writers", name, run, mention=pid_mention, quick=name == "train --resume"))
    name = "holder killed with SIGKILL: its lock is free at once"
    cases.append(Case("two writers", name, _stop_live(holder), ("ok",), quick=True))
    return cases


def _stop_live(holder: dict):
    def run(d: Path):
        proc = holder.get("proc")
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        run_dir = holder["run"]

        def lock() -> None:  # what train, rollout and compare take first
            from vespo_cli.lock import hold

            with hold(run_dir, "reliability check"):
                print(f"{run_dir}: locked")

        return fork_run(lock, WORK, 30), None, (0, 0)

    return run


def cat_kill(quick: bool) -> list[Case]:
    """SIGKILL a real `vespo train --replay` (4 steps, N = 2, checkpoints every 2) at a point found by
    watching its files, resume it, and compare with the uninterrupted run."""
    points = {
        "after 3 metric lines (mid rollout batch 2)": lambda run: len(metrics(run)) >= 3,
        "while a checkpoint is written": lambda run: any((run / "checkpoints").glob(".step-*")),
        "at the step-2 checkpoint boundary": lambda run: (run / "checkpoints" / "step-2").exists(),
    }
    cases = []
    for k, (name, cond) in enumerate(points.items()):

        def run(d: Path, cond=cond):
            rref = fixture("rref")
            run_dir = d / "run"
            proc = popen_vespo(
                ["train", "--preset", "tiny", "--replay", fixture("shards"), "--run-dir", run_dir], d / "killed.log"
            )
            t0 = time.monotonic()
            while not cond(run_dir):
                if proc.poll() is not None or time.monotonic() - t0 > 400:
                    break
                time.sleep(0.002)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            r = vespo(["train", "--resume", run_dir], timeout=400)
            if r.rc != 0:
                return r, None, (0, 0)
            return r, same_as(run_dir, rref), lost_reused(run_dir, rref)

        cases.append(Case("kill -9 and resume", name, run, ("ok",), quick=k == 0))
    return cases


def cat_yaml(quick: bool) -> list[Case]:
    """Bad YAML in a preset (--preset FILE) and in a run's config.yaml (--resume)."""
    levels = ["&a [x, x, x, x, x, x, x, x, x]"] + [
        f"&{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(9)
    ]
    bomb = "description: [" + ", ".join(levels) + "]\n"  # billion laughs: 9^10 leaves
    texts = {
        "non-UTF-8 bytes": b"trainer:\n  lr: \xff\xfe\x00\x81\n",
        "alias bomb (9^10 leaves)": bomb.encode(),
        "alias bomb in a list-valued key": bomb.replace("description:", "trainer:\n  betas:").encode(),
        "python object tag": b"trainer: !!python/object/apply:os.system ['true']\n",
        "deeply nested (5000 levels)": b"trainer: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "duplicate top-level key": b"trainer: {lr: 0.1}\ntrainer: {lr: .nan}\n",
        "tabs": b"trainer:\n\tlr: 0.1\n",
    }
    cases = []
    for k, (name, data) in enumerate(texts.items()):

        def preset(d: Path, data=data):
            p = d / "bad.yaml"
            p.write_bytes(b"extends: tiny\n" + data)
            r = vespo(["train", "--preset", p, "--run-dir", d / "run"], timeout=60)
            return r, nothing_written(d / "run"), (0, 0)

        def resume(d: Path, data=data):
            run_dir = copy_run(fixture("rref"), d / "run", drop_steps=(4,))
            (run_dir / "config.yaml").write_bytes(data)
            return vespo(["train", "--resume", run_dir], timeout=60), None, (0, 0)

        cases.append(Case("bad YAML", f"--preset: {name}", preset, mention="bad.yaml", quick=k < 2))
        cases.append(Case("bad YAML", f"config.yaml on --resume: {name}", resume, mention="config.yaml", quick=k == 0))
    return cases


def cat_fifo(quick: bool) -> list[Case]:
    """A FIFO named x.parquet (a reader that opens it blocks forever)."""

    def setup(d: Path, good: bool) -> Path:
        s = d / "rollouts"
        s.mkdir()
        if good:
            for p in sorted(fixture("shards").glob("*.parquet")):
                shutil.copy2(p, s / p.name)
        os.mkfifo(s / "x.parquet")
        return s

    def inspect_file(d: Path):
        return vespo(["inspect", setup(d, False) / "x.parquet"], timeout=30), None, (0, 0)

    def inspect_dir(d: Path):
        return vespo(["inspect", setup(d, False)], timeout=30), None, (0, 0)

    def inspect_mixed(d: Path):
        r = vespo(["inspect", setup(d, True)], timeout=30)
        return r, None if "x.parquet" in r.err else "x.parquet not reported as a bad shard", (0, 0)

    def replay_only(d: Path):
        return (
            vespo(["train", "--preset", "tiny", "--replay", setup(d, False), "--run-dir", d / "run"], timeout=60),
            None,
            (0, 0),
        )

    def preset_fifo(d: Path):
        os.mkfifo(d / "x.yaml")
        return vespo(["train", "--preset", d / "x.yaml", "--run-dir", d / "run"], timeout=30), None, (0, 0)

    def replay_mixed(d: Path):
        s = setup(d, True)
        r = vespo(["train", "--preset", "tiny", "--replay", s, *REPLAY_SMALL, "--run-dir", d / "run"], timeout=300)
        wrong = None if r.rc != 0 or "x.parquet" in r.err else "x.parquet skipped without naming it"
        return r, wrong, (0, 0)

    return [
        Case("FIFO x.parquet", "inspect x.parquet", inspect_file, mention="x.parquet", quick=True),
        Case("FIFO x.parquet", "inspect DIR (only the FIFO)", inspect_dir, mention="x.parquet", quick=True),
        Case("FIFO x.parquet", "inspect DIR (FIFO + 4 good shards)", inspect_mixed, ("ok",)),
        Case("FIFO x.parquet", "train --replay DIR (only the FIFO)", replay_only, mention="x.parquet"),
        Case("FIFO x.parquet", "train --replay DIR (FIFO + 4 good shards)", replay_mixed, ("ok",)),
        Case("FIFO x.parquet", "--preset x.yaml (a FIFO)", preset_fifo, mention="x.yaml"),
    ]


def cat_names(quick: bool) -> list[Case]:
    """Names checked before any work: eval benchmarks, worker names, engines."""
    cases = []

    def train_bench(d: Path):
        t0 = time.monotonic()
        r = vespo(
            ["train", "--preset", "tiny", "--set", "eval.benchmarks=[aime24, no-such-bench]", "--run-dir", d / "run"],
            timeout=120,
        )
        wrong = nothing_written(d / "run") if r.rc != 0 else None
        if r.rc != 0 and time.monotonic() - t0 > 60:
            wrong = "refused only after training"
        return r, wrong, (0, 0)

    cases.append(
        Case(
            "names", "train: eval.benchmarks=[aime24, no-such-bench]", train_bench, mention="no-such-bench", quick=True
        )
    )
    for args, mention in [
        (["eval", "no-such-bench", "--model", "tiny", "--limit", "1"], "no-such-bench"),
        (["eval", "aime24", "no-such-bench", "--model", "tiny", "--limit", "1"], "no-such-bench"),
        (["eval", "aime24", "--model", "tiny", "--engine", "vllm2"], "vllm2"),
        (["train", "--preset", "tiny", "--set", "rollout.engine=sglang"], "rollout.engine"),
        (["train", "--preset", "tiny", "--set", "data.train=no-such-dataset"], "no-such-dataset"),
        (["train", "--preset", "tiny", "--set", "model.path=/no/such/model"], "/no/such/model"),
        (["train", "--preset", "tiny", "--algo", "no-such-algo"], "no-such-algo"),
    ]:

        def run(d: Path, args=args):
            return (
                vespo([*args, "--out" if args[0] == "eval" else "--run-dir", d / "run"], timeout=120),
                nothing_written(d / "run"),
                (0, 0),
            )

        cases.append(Case("names", " ".join(args), run, mention=mention, quick=False))
    for worker in ["../evil", "w0/../../evil", "/tmp/evil", "", "w0\n", ".."]:

        def rollout(d: Path, worker=worker):
            r = vespo(
                ["rollout", "--preset", "tiny", "--num-prompts", "2", "--worker", worker, "--run-dir", d / "run" / "r"],
                timeout=120,
            )
            outside = [p for p in d.rglob("*.parquet") if not p.is_relative_to(d / "run" / "r" / "rollouts")]
            wrong = f"wrote outside the run directory: {outside[0]}" if outside else None
            if Path("/tmp/evil").exists():
                wrong = "wrote /tmp/evil"
            return r, wrong, (0, 0)

        cases.append(
            Case(
                "names",
                f"rollout --worker {worker!r}",
                rollout,
                mention=("--worker", repr(worker)[1:-1]),
                quick=worker == "../evil",
            )
        )

    def follow(d: Path):
        run_dir = copy_run(fixture("rref"), d / "run")
        return vespo(["rollout", "--follow", run_dir, "--worker", "../evil"], timeout=60), None, (0, 0)

    cases.append(Case("names", "rollout --follow RUN --worker ../evil", follow, mention="--worker"))
    return cases


def cat_inputs(quick: bool) -> list[Case]:
    """Resume after the run's inputs changed (item 4): the replay directory, trainer.staleness, batch
    sizes, rollout.n; and a rollout re-run into its output with another batch size."""
    cases = []

    def resume_after(change: Callable[[Path], None], expect_ok: bool = False):
        def run(d: Path):
            rref = fixture("rref")
            run_dir = copy_run(rref, d / "run", drop_steps=(4,))
            shards = d / "shards"
            shutil.copytree(fixture("shards"), shards)
            info = json.loads((run_dir / "run.json").read_text())
            info["replay"] = str(shards)
            (run_dir / "run.json").write_text(json.dumps(info))
            inputs = run_dir / "inputs.json"  # the copied replay directory is the recorded one
            if inputs.exists():
                rec = json.loads(inputs.read_text())
                if rec.get("replay"):
                    rec["replay"]["path"] = str(shards.resolve())
                inputs.write_text(json.dumps(rec))
            change(run_dir)
            r = vespo(["train", "--resume", run_dir], timeout=300)
            if r.rc != 0:
                return r, None, (0, 0)
            return r, same_as(run_dir, rref), lost_reused(run_dir, rref)

        return run

    def set_cfg(key: str, value):
        def change(run_dir: Path):
            import yaml

            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            sec, k = key.split(".")
            if key != "trainer.rollout_batch_prompts":
                cfg["trainer"]["rollout_batch_prompts"] = None  # derived again from mbs × N (else the config refuses)
            cfg[sec][k] = value
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))

        return change

    def shards_of(run_dir: Path) -> Path:
        return Path(json.loads((run_dir / "run.json").read_text())["replay"])

    def add_shard(run_dir: Path):
        s = shards_of(run_dir)
        first = sorted(s.glob("*.parquet"))[0]

        def redraw():
            import pyarrow as pa

            from vespo_cli.shards import read_shard, write_shard

            t = read_shard(first)
            t = t.set_column(
                t.schema.get_field_index("reward"),
                "reward",
                pa.array([1.0 - x for x in t.column("reward").to_pylist()], pa.float32()),
            )
            write_shard(t, s / "a-new-shard.parquet")

        call(redraw)

    def remove_shard(run_dir: Path):
        sorted(shards_of(run_dir).glob("*.parquet"))[-1].unlink()

    def modify_shard(run_dir: Path):
        s = shards_of(run_dir)
        last = sorted(s.glob("*.parquet"))[-1]

        def redraw():
            import pyarrow as pa

            from vespo_cli.shards import read_shard, write_shard

            t = read_shard(last)
            t = t.set_column(
                t.schema.get_field_index("reward"),
                "reward",
                pa.array([1.0 - x for x in t.column("reward").to_pylist()], pa.float32()),
            )
            last.unlink()
            write_shard(t, last)

        call(redraw)

    def rename_shard(run_dir: Path):
        s = shards_of(run_dir)
        last = sorted(s.glob("*.parquet"))[-1]
        last.rename(s / ("z-" + last.name))

    def nothing(run_dir: Path):
        pass

    either = ("ok", "refuse")  # continue to the reference result, or refuse naming what changed
    mbs, gbs = "trainer.minibatch_prompts", "trainer.rollout_batch_prompts"
    variants = [
        ("nothing changed (control)", nothing, ("ok",), "", True),
        ("replay dir: a shard added", add_shard, either, "a-new-shard", True),
        ("replay dir: a shard removed", remove_shard, either, ".parquet", False),
        ("replay dir: a shard rewritten with other rewards", modify_shard, either, ".parquet", False),
        ("replay dir: a shard renamed", rename_shard, either, ".parquet", False),
        ("trainer.staleness 2 → 1", set_cfg("trainer.staleness", 1), either, "trainer.staleness", True),
        (f"{mbs} 2 → 1", set_cfg(mbs, 1), either, mbs, False),
        (f"{gbs} → 8", set_cfg(gbs, 8), either, (gbs, "trainer.staleness"), False),
        ("rollout.n 4 → 2", set_cfg("rollout.n", 2), either, "rollout.n", False),
        ("trainer.seed 0 → 1", set_cfg("trainer.seed", 1), either, "trainer.seed", False),
    ]
    for name, change, expect, mention, q in variants:
        cases.append(
            Case(
                "changed inputs",
                f"resume (replay, at step 2 of 4): {name}",
                resume_after(change),
                expect,
                mention,
                quick=q,
            )
        )

    def set_flag(args):
        return ["--set", args]

    def rollout_rerun(mbs2: int, n2: int | None = None):
        def run(d: Path):
            fixture("shards")
            # the 8-prompt rollout of the shard fixture (mbs 2: 4 shards), as if killed after 2 shards
            run_dir = copy_run(WORK / "fx-roll", d / "run")
            for p in sorted((run_dir / "rollouts").glob("*.parquet"))[2:]:
                p.unlink()
            base = ["rollout", "--preset", "tiny", "--run-dir", run_dir]
            again = [*base, "--num-prompts", "8", "--set", f"trainer.minibatch_prompts={mbs2}"]
            if n2 is not None:
                again += ["--n", str(n2)]
            r = vespo(again, timeout=300)
            if r.rc != 0:
                return r, None, (0, 0)
            ids: list[str] = []
            for p in sorted((run_dir / "rollouts").glob("*.parquet")):
                t = pq.read_table(p, columns=["prompt_id", "sample_idx"])
                ids += sorted(set(t.column("prompt_id").to_pylist()))
            distinct = len(set(ids))
            reused, lost = len(ids) - distinct, max(0, 8 - distinct)
            wrong = f"{distinct} distinct prompts of 8, {reused} sampled twice" if reused or lost else None
            return r, wrong, (lost * 4, reused * 4)

        return run

    cases.append(
        Case("changed inputs", "rollout 4 of 8 prompts (mbs 2), then 8 with mbs 2 (control)", rollout_rerun(2), ("ok",))
    )
    cases.append(
        Case(
            "changed inputs",
            "rollout 4 prompts (mbs 2), then 8 with mbs 4",
            rollout_rerun(4),
            ("ok", "refuse"),
            "trainer.minibatch_prompts",
            quick=True,
        )
    )
    cases.append(
        Case(
            "changed inputs",
            "rollout 4 prompts (mbs 2), then 8 with mbs 1",
            rollout_rerun(1),
            ("ok", "refuse"),
            "trainer.minibatch_prompts",
        )
    )
    cases.append(
        Case(
            "changed inputs",
            "rollout 4 prompts (n 4), then 8 with n 2",
            rollout_rerun(2, 2),
            ("ok", "refuse"),
            ("rollout.n", "trainer.minibatch_prompts"),
        )
    )
    return cases


# --------------------------------------------------------------------------- issue 31: the last cases


def _rewrite(src: Path, dst: Path, change: Callable[[dict], None], hashes: bool = False) -> None:
    """`src`'s rows with `change` (column name → list of values) applied, written to `dst` as another
    producer would (plain parquet, the schema version, no vespo hashes) or, with `hashes`, by vespo's
    own writer without its checks (a vespo shard whose values are bad); in a forked process."""

    def write() -> None:
        import pyarrow as pa

        from vespo_cli import shards as S

        t = pq.read_table(src)
        cols = {n: t.column(n).to_pylist() for n in t.column_names}
        change(cols)
        if hashes:  # this forked child only: vespo's writer, its contract checks off
            S.validate = lambda *args, **kwargs: None
            S.write_shard(S.to_table(cols), dst)
            return
        table = pa.table({n: pa.array(v, type=t.schema.field(n).type) for n, v in cols.items()})
        pq.write_table(table.replace_schema_metadata({S.SCHEMA_KEY: b"1"}), dst)

    call(write)


def _replay_dir(d: Path) -> Path:
    """A copy of the fixture's shards (hard links: vespo never writes into a shard)."""
    out = d / "shards"
    out.mkdir()
    for f in sorted(fixture("shards").glob("*.parquet")):
        os.link(f, out / f.name)
    return out


def _first_shard() -> Path:
    return sorted(fixture("shards").glob("*.parquet"))[0]


def _set(column: str, row: int, value) -> Callable[[dict], None]:
    def change(cols: dict) -> None:
        cols[column][row] = value

    return change


SKIP_COUNTS = ("shards_quarantined", "shards_duplicate")  # a skipped shard is counted on step 1's line


def _replay_with(name: str, change: Callable[[dict], None], alone: bool, hashes: bool = False, skipped: bool = True):
    """A case: the first fixture shard rewritten by `change` as `name`, replayed alone (refused: every
    shard is bad) or beside the fixture's shards (name sorts last: skipped with one warning line naming
    it, and the run ends where the reference does)."""

    def run(d: Path):
        shards = d / "alone" if alone else _replay_dir(d)
        shards.mkdir(exist_ok=True)
        _rewrite(_first_shard(), shards / name, change, hashes)
        r = vespo(["train", "--preset", "tiny", "--replay", shards, "--run-dir", d / "run"], timeout=400)
        if r.rc != 0:  # (the run directory is written before the shards are read: not checked)
            return r, None, (0, 0)
        rref = fixture("rref")
        warned = [ln for ln in r.err.splitlines() if "skipping" in ln and name in ln]
        wrong = None if len(warned) == (1 if skipped else 0) else f"{len(warned)} warning lines name {name}"
        return r, wrong or same_as(d / "run", rref, ignore=SKIP_COUNTS), lost_reused(d / "run", rref)

    return run


def _other_prompt(cols: dict) -> None:
    """Every group keeps its id; prompt ids and prompt tokens become another prompt's."""
    cols["prompt_id"] = [f"other-{p}" for p in cols["prompt_id"]]
    cols["prompt_token_ids"] = [[*t[:-1], (t[-1] + 1) % 1000] for t in cols["prompt_token_ids"]]


def _other_groups(cols: dict) -> None:
    """Other prompts under group and shard ids of their own: a valid shard that is no copy."""
    _other_prompt(cols)
    cols["group_id"] = [f"other/{g}" for g in cols["group_id"]]
    cols["shard_id"] = [f"other-{i}" for i in cols["shard_id"]]


def cat_foreign(quick: bool) -> list[Case]:
    """Shards of another producer (plain parquet: the schema version, no vespo hashes), whose contents
    get the same checks as vespo's: alone in --replay (refused naming the file) and beside valid shards
    (skipped with one line naming it; the run ends where the reference does)."""
    changes = {
        "a group's rows disagree on the prompt id": _set("prompt_id", 1, "someone-else"),
        "a group's rows disagree on the prompt tokens": _set("prompt_token_ids", 1, [1, 2, 3]),
        "reward 3e38": _set("reward", 0, 3e38),
        "a log-prob of +0.5": lambda c: c["rollout_logprobs"].__setitem__(0, [0.5] * len(c["rollout_logprobs"][0])),
        "temperature inf": _set("temperature", 0, float("inf")),
    }
    cases = []
    for i, (what, change) in enumerate(changes.items()):
        for alone in (True, False):
            where = "alone" if alone else "beside valid shards"
            run = _replay_with("zz-foreign.parquet", change, alone)
            cases.append(
                Case("foreign shards", f"{what}, {where}", run, ("refuse",) if alone else ("ok",),
                     mention="zz-foreign.parquet", quick=i == 0)
            )  # fmt: skip
    reuse = _replay_with("zz-foreign.parquet", lambda c: c.update(group_id=[f"o/{g}" for g in c["group_id"]]), False)
    cases.append(Case("foreign shards", "another shard's shard_id (the ledger's key) for other rows", reuse, ("ok",)))
    dup = _replay_with("zz-foreign.parquet", lambda c: None, alone=False)
    cases.append(Case("foreign shards", "a copy of a used shard (no hashes): a duplicate, skipped", dup, ("ok",)))
    valid = _replay_with("zz-foreign.parquet", _other_groups, alone=False, skipped=False)
    cases.append(Case("foreign shards", "a valid shard of other groups, beside valid shards: accepted", valid, ("ok",)))
    return cases


def _collision_sorted_first(d: Path):
    """The colliding shard sorts before the shard whose ids it reuses: that one is skipped instead
    (one line naming both), and the run trains on the rest."""
    shards = _replay_dir(d)
    first = _first_shard().name
    _rewrite(_first_shard(), shards / ("a-" + first), _other_prompt)
    r = vespo(["train", "--preset", "tiny", "--replay", shards, "--run-dir", d / "run"], timeout=400)
    if r.rc != 0:
        return r, None, (0, 0)
    warned = [ln for ln in r.err.splitlines() if "group_id" in ln and first in ln and "a-" + first in ln]
    return r, (None if len(warned) == 1 else "no line names both shards") or finite_weights(d / "run"), (0, 0)


def _same_named_runs(d: Path):
    """Two `vespo rollout` runs in directories of the same name (a/roll, b/roll): their group ids
    differ (run ids in run.json), so replaying both trains on every group, none mixed."""
    shards = d / "both"
    shards.mkdir()
    for parent in ("a", "b"):
        r = vespo(["rollout", "--preset", "tiny", "--num-prompts", "4", "--run-dir", d / parent / "roll"], timeout=400)
        if r.rc != 0:
            return r, None, (0, 0)
        for f in (d / parent / "roll" / "rollouts").glob("*.parquet"):
            os.link(f, shards / f"{parent}-{f.name}")
    ids = {p: json.loads((d / p / "roll" / "run.json").read_text()).get("run_id") for p in "ab"}
    r = vespo(["train", "--preset", "tiny", "--replay", shards, "--run-dir", d / "run", *REPLAY_SMALL], timeout=400)
    if r.rc != 0:
        return r, None, (0, 0)
    if not all(ids.values()) or ids["a"] == ids["b"]:
        return r, f"run ids {ids}", (0, 0)
    if "skipping" in r.err:
        return r, "a shard was skipped", (0, 0)
    return r, finite_weights(d / "run"), (0, 0)


def cat_collisions(quick: bool) -> list[Case]:
    """A shard that reuses another shard's group ids for other prompts (advantages would be normalised
    across two prompts): skipped with one line naming both shards and the id, whoever wrote it; and
    two rollout runs in directories of the same name, whose ids no longer collide."""
    first = _first_shard().name
    return [
        Case("group collisions", "foreign shard (no hashes) reusing a shard's group ids, sorted last",
             _replay_with("zz-collide.parquet", _other_prompt, alone=False), ("ok",), quick=True),
        Case("group collisions", "vespo shard (hashes) reusing a shard's group ids, sorted last",
             _replay_with("zz-collide.parquet", _other_prompt, alone=False, hashes=True), ("ok",)),
        Case("group collisions", f"colliding shard sorted before {first}", _collision_sorted_first, ("ok",)),
        Case("group collisions", "two rollout runs in directories of the same name", _same_named_runs, ("ok",)),
    ]  # fmt: skip


def cat_ranges(quick: bool) -> list[Case]:
    """Values outside the documented ranges of a shard's numeric columns (vespo_cli/shards.py: |reward|
    <= 1e6, rollout log-probs in [-1000, 1e-4], finite temperature), in an otherwise valid shard
    written with vespo's hashes: refused naming the file; the ends of the ranges are accepted."""
    lp = lambda v: lambda c: c["rollout_logprobs"].__setitem__(0, [v] * len(c["rollout_logprobs"][0]))  # noqa: E731
    bad = {
        "reward 3e38": _set("reward", 0, 3e38),
        "reward -3e38": _set("reward", 0, -3e38),
        "reward 1.5e6": _set("reward", 0, 1.5e6),
        "log-prob -1e5": lp(-1e5),
        "log-prob -1000.5": lp(-1000.5),
        "log-prob +0.5": lp(0.5),
        "temperature inf": _set("temperature", 0, float("inf")),
    }
    cases = [
        Case("out-of-range values", what, _replay_with("zz-range.parquet", change, alone=True, hashes=True),
             ("refuse",), mention="zz-range.parquet", quick=what == "reward 3e38")
        for what, change in bad.items()
    ]  # fmt: skip
    ends = {"reward ±1e6": lambda c: c["reward"].__setitem__(slice(0, 2), [1e6, -1e6]), "log-prob -1000": lp(-1000.0)}
    for what, change in ends.items():

        def run(d: Path, change=change):
            shards = d / "alone"
            shards.mkdir()
            _rewrite(_first_shard(), shards / "ends.parquet", change, hashes=True)
            r = vespo(["train", "--preset", "tiny", "--replay", shards, "--run-dir", d / "run", *REPLAY_SMALL],
                      timeout=400)  # fmt: skip
            return r, (finite_weights(d / "run") if r.rc == 0 else None), (0, 0)

        cases.append(Case("out-of-range values", f"{what} (the end of the range: accepted)", run, ("ok",)))
    return cases


def cat_signals(quick: bool) -> list[Case]:
    """SIGTERM (SLURM) and SIGINT (Ctrl-C) to a real `vespo train --replay` at a point found by watching
    its files: one line "interrupted at step K; `vespo train --resume RUN` continues", exit 128 +
    signum, no torn checkpoint; a stale temporary of a killed writer planted in the run is removed by
    the resume, which ends where the uninterrupted run does, bit for bit."""
    points = {
        "after 3 metric lines": lambda run: len(metrics(run)) >= 3,
        "while a checkpoint is written": lambda run: any((run / "checkpoints").glob(".step-*")),
    }
    cases = []
    for k, (point, cond) in enumerate(points.items()):
        for sig in (signal.SIGTERM, signal.SIGINT):

            def run(d: Path, cond=cond, sig=sig):
                rref, run_dir, log = fixture("rref"), d / "run", d / "signalled.log"
                proc = popen_vespo(
                    ["train", "--preset", "tiny", "--replay", fixture("shards"), "--run-dir", run_dir], log
                )
                t0 = time.monotonic()
                while not cond(run_dir) and proc.poll() is None and time.monotonic() - t0 < 400:
                    time.sleep(0.002)
                os.kill(proc.pid, sig)
                rc = proc.wait()
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                want = f"; `vespo train --resume {run_dir}` continues"
                if rc == 0:
                    wrong = "finished before the signal"
                elif (
                    rc != 128 + sig
                    or not lines
                    or not (lines[-1].startswith("interrupted at step ") and lines[-1].endswith(want))
                ):
                    wrong = f"exit {rc}, last line {lines[-1:]!r}"
                elif any("Traceback" in ln for ln in lines):
                    wrong = "a traceback"
                else:
                    wrong = None
                stale = run_dir / "checkpoints" / ".step-99.killed.tmp"
                stale.mkdir(parents=True, exist_ok=True)
                (stale / "model.safetensors").write_bytes(b"\0" * 2**20)
                r = vespo(["train", "--resume", run_dir], timeout=400)
                if r.rc != 0:
                    return r, wrong, (0, 0)
                wrong = wrong or ("the stale temporary was left" if stale.exists() else None)
                return r, wrong or same_as(run_dir, rref), lost_reused(run_dir, rref)

            name = f"{signal.Signals(sig).name} {point}, then resume"
            cases.append(Case("signals", name, run, ("ok",), quick=k == 0 and sig == signal.SIGTERM))
    return cases


def cat_manifestless(quick: bool) -> list[Case]:
    """Checkpoint directories without a (valid) manifest beside good ones: named in one warning line and
    skipped, the resume falls back to the last good checkpoint and ends where the reference does."""
    rref = fixture("rref")

    def only_state(ck: Path) -> None:
        for f in list(ck.iterdir()):
            if f.name != "trainer_state.json":
                shutil.rmtree(f) if f.is_dir() else f.unlink()

    def future(ck: Path) -> None:
        target = ck.with_name("step-7")
        target.mkdir()
        (target / "trainer_state.json").write_text(json.dumps({"step": 7, "iteration": 3, "ledger": []}))

    breaks = {
        "step-4 holding only trainer_state.json": ("step-4", only_state),
        "step-4 without manifest.json": ("step-4", lambda ck: (ck / "manifest.json").unlink()),
        "step-7 (beyond the run) holding only trainer_state.json": ("step-7", future),
    }
    cases = []
    for i, (what, (named, brk)) in enumerate(breaks.items()):

        def run(d: Path, named=named, brk=brk):
            run_dir = copy_run(rref, d / "run")
            brk(run_dir / "checkpoints" / "step-4")
            r = vespo(["train", "--resume", run_dir], timeout=400)
            if r.rc != 0:
                return r, None, (0, 0)
            warned = [ln for ln in r.err.splitlines() if ln.startswith("warning:") and named in ln]
            wrong = None if len(warned) == 1 else f"{len(warned)} warning lines name {named}"
            return r, wrong or same_as(run_dir, rref), lost_reused(run_dir, rref)

        cases.append(Case("manifest-less checkpoints", what, run, ("ok",), quick=i == 0))
    return cases


def _in_namespace(script: str, cwd: Path, timeout: float = 400) -> Result:
    """A shell script as root of a new user + mount namespace (a small tmpfs: a real full disk)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                           env={**os.environ, **ENV}, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        return Result(None, str(e.stdout or ""), str(e.stderr or ""), time.monotonic() - t0, hung=True)
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def cat_disk_faults(quick: bool) -> list[Case]:
    """Faults of the machine that libraries raise as something other than OSError (tokenizers and
    safetensors raise plain exceptions whose message is the system's): a real full disk (a tmpfs in a
    mount namespace) while the tiny model and its tokenizer are built into an empty model cache; and a
    directory where the run's `.vespo.lock` belongs. Exit 1, one line naming the cause or the lock."""
    py = f"{sys.executable} -m vespo_cli.cli"

    def full_cache(size: str):
        def run(d: Path):
            script = (
                f"mount -t tmpfs -o size={size} none {d} && cd {ROOT} && VESPO_CACHE={d}/cache {py} train "
                f"--preset tiny --replay {fixture('shards')} --run-dir {d}/run"
            )
            return _in_namespace(script, d), None, (0, 0)

        return run

    def lock_dir(d: Path):
        (d / "run" / ".vespo.lock").mkdir(parents=True)
        return vespo(["train", "--preset", "tiny", "--replay", fixture("shards"), "--run-dir", d / "run"]), None, (0, 0)

    faults = "non-OSError disk faults"
    enospc = ("no space left on device",)
    return [
        Case(faults, "tokenizer cache on a full 64 KiB disk", full_cache("64k"), ("env",), mention=enospc, quick=True),
        Case(faults, "model weights on a 6 MiB disk (the tokenizer fits)", full_cache("6m"), ("env",), mention=enospc),
        Case(faults, ".vespo.lock is a directory", lock_dir, ("env",), mention=".vespo.lock", quick=True),
    ]


CATEGORIES: dict[str, Callable[[bool], list[Case]]] = {
    "config": cat_config,
    "shard-flips": cat_shard_flips,
    "ckpt-flips": cat_ckpt_flips,
    "run-files": cat_run_files,
    "two-writers": cat_two_writers,
    "kill": cat_kill,
    "yaml": cat_yaml,
    "fifo": cat_fifo,
    "names": cat_names,
    "inputs": cat_inputs,
    "foreign": cat_foreign,
    "collisions": cat_collisions,
    "ranges": cat_ranges,
    "signals": cat_signals,
    "manifestless": cat_manifestless,
    "disk-faults": cat_disk_faults,
}


# --------------------------------------------------------------------------- report


def _cpu_min() -> float:
    """User + system CPU time of this script and every process it waited for, in minutes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) / 60


DOCS: dict[str, str] = {}  # category → what its cases do (the docstring of the function that makes them)


def report(results: list[Outcome], argv: list[str], secs: float, quick: bool) -> str:
    cats: dict[str, list[Outcome]] = {}
    for o in results:
        cats.setdefault(o.case.category, []).append(o)
    head = "| category | cases | clean | traceback | hang | silent wrong | other | samples lost | samples reused |"
    lines = [head, "|" + "---|" * 9]
    tot = {k: 0 for k in ("cases", *OUTCOMES, "lost", "reused")}
    for cat, os_ in cats.items():
        row = {"cases": len(os_), **{k: sum(o.outcome == k for o in os_) for k in OUTCOMES}}
        row["lost"], row["reused"] = sum(o.lost for o in os_), sum(o.reused for o in os_)
        for k in tot:
            tot[k] += row[k]
        lines.append(f"| {cat} | " + " | ".join(str(row[k]) for k in tot) + " |")
    lines.append("| **all** | " + " | ".join(f"**{tot[k]}**" for k in tot) + " |")
    cmd = " ".join(["python reports/reliability/run.py", *argv])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "vespo_cli"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    out = [
        "# Reliability (issue 19): every fault case, re-measured",
        "",
        "Generated by `reports/reliability/run.py` (do not edit by hand); produced with",
        "",
        f"```bash\n.venv/bin/{cmd}\n```",
        "",
        f"at commit {commit}{' (with uncommitted changes under vespo_cli/)' if dirty else ''}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, in {secs / 60:.1f} min on {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[1]:.0f} at the end: other jobs share the machine; {_cpu_min():.1f} CPU-min)"
        f"{' (--quick: a few cases per category)' if quick else ''}.",
        "",
        "Each case runs the `vespo` command line in its own process with a timeout (see the script's",
        "docstring). **Clean**: bad input refused with exit 2 and one `error:` line naming the file, key",
        "or value (nothing written); a fault of the machine with exit 1; acceptable input run to a result",
        "checked against an uninterrupted reference run (final weights bit for bit, metrics, ledger).",
        "**Silent wrong**: exit 0 with a wrong result, or bad input accepted. **Other**: a wrong exit code,",
        "an error line that does not name the culprit, or a crash. **Samples lost / reused**: rows of the",
        "reference run's consumed-shard ledger (or prompts of a rollout) missing / used more than once.",
        "",
        *lines,
        "",
    ]
    for cat, os_ in cats.items():
        out += [f"## {cat}", "", DOCS.get(cat, ""), "", "| case | outcome | exit | s | what happened |"]
        out += ["|---|---|---|---|---|"]
        for o in os_:
            detail = o.detail.replace("|", "\\|").replace("\n", " ")
            if o.lost or o.reused:
                detail += f" (lost {o.lost}, reused {o.reused})"
            name = o.case.name.replace("|", "\\|")
            out.append(f"| {name} | {o.outcome} | {o.rc} | {o.secs:.1f} | {detail} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    global WORK, KEEP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few cases per category")
    ap.add_argument("--only", default="", help=f"comma-separated categories ({', '.join(CATEGORIES)})")
    ap.add_argument("--out", default=str(ROOT / "reports" / "reliability.md"))
    ap.add_argument("--json", default="", help="also write the outcomes as JSON here")
    ap.add_argument("--work", default="", help="scratch directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep each case's directory")
    args = ap.parse_args()
    if args.work:
        shutil.rmtree(WORK, ignore_errors=True)
        WORK = Path(args.work)
        WORK.mkdir(parents=True, exist_ok=True)
    KEEP = args.keep
    (WORK / "cases").mkdir(exist_ok=True)
    only = [c for c in args.only.split(",") if c]
    for c in only:
        if c not in CATEGORIES:
            ap.error(f"--only {c}: unknown category (known: {', '.join(CATEGORIES)})")
    t0 = time.monotonic()
    results: list[Outcome] = []
    for name, make in CATEGORIES.items():
        if only and name not in only:
            continue
        try:
            cases = [c for c in make(args.quick) if c.quick or not args.quick]
        except Exception as e:
            print(f"{name}: could not build the cases: {e}", file=sys.stderr)
            results.append(Outcome(Case(name, "(building the cases)", None), "other", f"harness: {e}", 0.0))
            continue
        print(f"{name}: {len(cases)} cases", flush=True)
        for c in cases:
            DOCS.setdefault(c.category, " ".join((make.__doc__ or "").split()))
        for c in cases:
            o = run_case(c)
            results.append(o)
            flag = "" if o.outcome == "clean" else "   <-- " + o.outcome.upper()
            print(f"  {o.secs:6.1f}s {c.name[:70]:70s} {o.outcome}{flag}\n{'':10s}{o.detail[:150]}", flush=True)
    secs = time.monotonic() - t0
    argv = ["--quick"] if args.quick else []  # where the files went does not change what was measured
    argv += [f"--only {args.only}"] if args.only else []
    text = report(results, argv, secs, args.quick)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {"category": o.case.category, "case": o.case.name, "outcome": o.outcome, "detail": o.detail,
                     "rc": o.rc, "secs": round(o.secs, 2), "lost": o.lost, "reused": o.reused}
                    for o in results
                ],
                indent=1,
            )
        )  # fmt: skip
    bad = [o for o in results if o.outcome != "clean" or o.lost or o.reused]
    print(f"{len(results)} cases, {len(results) - len(bad)} clean, {len(bad)} not; {secs / 60:.1f} min -> {args.out}")
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
