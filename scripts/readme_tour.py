"""The README's tour, run as written at reduced sizes (issue 30): `make tour`, or
`python scripts/readme_tour.py [--dry] [--only N] [--report PATH] [--workdir DIR]`.

The `vespo …` lines are read from README.md's "A tour" code block (comments dropped, `\\` lines
joined), so the check follows the README. Each runs in order, in one fresh working directory, as this
checkout's `vespo` (`python -m vespo_cli.cli`, the checkout first on PYTHONPATH), with only size
options appended (a repeated option's last value wins; `--set`s add up):

- rollout: `--num-prompts 2` and SAMPLES, 2 samples of at most 16 tokens per prompt;
- train: SAMPLES, one prompt group per optimizer step (`trainer.minibatch_prompts=1`) and 2 steps,
  except that a run a later line names (`--resume runs/n8`, `runs/n8/checkpoints/step-64`) keeps the
  README's step count, so that the step-K paths of the README exist: sizes shrink within a step, the
  step numbers a user reads stay; `--resume` takes nothing (a resume takes only `trainer.steps`, and
  the run's config.yaml already has the small sizes); `--dry-run` takes nothing (it loads no model);
- eval: `--limit 2 --k 1`, answers of at most 16 tokens;
- compare: `--seeds 1`, SAMPLES, one prompt group per step, 2 steps;
- probe: `--prompts 2 --bootstrap 100` (the least it takes), SAMPLES, one prompt group per step (its
  ages K are the README's: `-K` adds, it cannot replace);
- presets, inspect: nothing.

A line whose subcommand has no entry here fails before anything runs. Prints one PASS/FAIL line per
command with its seconds (a failure's log tail below it) and exits 1 if any failed; `--report PATH`
also writes a markdown summary. The working directory is removed when every command passed, else
kept (its logs/ hold each command's output); `--workdir DIR` keeps it always.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "## A tour"

SAMPLES = ("--set", "rollout.n=2", "--set", "rollout.max_tokens=16")
ONE_GROUP = ("--set", "trainer.minibatch_prompts=1")
TWO_STEPS = ("--set", "trainer.steps=2")
OVERRIDES = {
    "presets": (),
    "inspect": (),
    "rollout": ("--num-prompts", "2", *SAMPLES),
    "train": (*SAMPLES, *ONE_GROUP),  # + TWO_STEPS: see train_overrides
    "eval": ("--limit", "2", "--k", "1", "--set", "eval.max_tokens=16"),
    "compare": ("--seeds", "1", *SAMPLES, *ONE_GROUP, *TWO_STEPS),
    "probe": ("--prompts", "2", "--bootstrap", "100", *SAMPLES, *ONE_GROUP),
}


class Command(NamedTuple):
    line: int  # README line number of its first line
    argv: tuple[str, ...]  # after `vespo`, as written
    extra: tuple[str, ...]  # the size options appended

    def shell(self, extra: bool = True) -> str:
        return shlex.join(("vespo", *self.argv, *(self.extra if extra else ())))


def tour_lines(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """(README line number, words) of each shell command in the first code block after SECTION:
    comments dropped, `\\`-continued lines joined."""
    lines = text.splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        raise ValueError(f"README: no {SECTION!r} section") from None
    fence = next((i for i in range(start, len(lines)) if lines[i].startswith("```")), None)
    if fence is None:
        raise ValueError(f"README: no code block under {SECTION!r}")
    out: list[tuple[int, tuple[str, ...]]] = []
    pending: tuple[int, tuple[str, ...]] | None = None
    for i in range(fence + 1, len(lines)):
        if lines[i].startswith("```"):
            break
        raw = lines[i].rstrip()
        continued = raw.endswith("\\")
        words = tuple(shlex.split(raw[:-1] if continued else raw, comments=True))
        if pending is None and not words:
            continue
        first, before = pending or (i + 1, ())
        pending = (first, before + words)
        if not continued:
            out.append(pending)
            pending = None
    return out


def _option(argv: tuple[str, ...], *names: str) -> str | None:
    """The value of the last of `names` in argv (`--out X` or `--out=X`)."""
    value = None
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            value = argv[i + 1]
        elif "=" in a and a.split("=", 1)[0] in names:
            value = a.split("=", 1)[1]
    return value


def _names(argv: tuple[str, ...], path: str) -> bool:
    """Whether an argument of argv is `path` or a path below it."""
    return any(a == path or a.startswith(path.rstrip("/") + "/") for a in argv)


def train_overrides(argv: tuple[str, ...], later: list[tuple[str, ...]]) -> tuple[str, ...]:
    """A `train` line's size options (see the module docstring)."""
    if "--resume" in argv or "--dry-run" in argv:
        return ()
    out = _option(argv, "--out", "--run-dir")
    named_later = out is not None and any(_names(a, out) for a in later)
    return OVERRIDES["train"] + (() if named_later else TWO_STEPS)


def tour(text: str) -> list[Command]:
    """The tour's commands with their size options; ValueError for a line that is not `vespo <known>`."""
    parsed = []
    for line, words in tour_lines(text):
        if len(words) < 2 or words[0] != "vespo":
            raise ValueError(f"README.md:{line}: {shlex.join(words)!r}: expected `vespo <subcommand> …`")
        if words[1] not in OVERRIDES:
            raise ValueError(
                f"README.md:{line}: `vespo {words[1]}`: no size options for this subcommand "
                f"(known: {', '.join(OVERRIDES)}; add it to scripts/readme_tour.py)"
            )
        parsed.append((line, tuple(words[1:])))
    commands = []
    for i, (line, argv) in enumerate(parsed):
        later = [a for _, a in parsed[i + 1 :]]
        extra = train_overrides(argv, later) if argv[0] == "train" else OVERRIDES[argv[0]]
        commands.append(Command(line, argv, extra))
    return commands


def run(command: Command, workdir: Path, log: Path) -> tuple[bool, float]:
    """Run one command in `workdir` (output to `log`); (passed, seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(
            [sys.executable, "-m", "vespo_cli.cli", *command.argv, *command.extra],
            cwd=workdir,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return rc == 0, time.perf_counter() - t0


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join("    " + s for s in log.read_text(errors="replace").splitlines()[-lines:])


def write_report(path: Path, results: list[tuple[Command, bool, float]]) -> None:
    """A markdown table: README line, command as written, size options, result, seconds."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    rows = []
    for c, ok, seconds in results:
        extra, result = f"`{shlex.join(c.extra)}`" if c.extra else "–", "pass" if ok else "**FAIL**"
        rows.append(f"| {c.line} | `{c.shell(extra=False)}` | {extra} | {result} | {seconds:.1f} |")
    passed = sum(ok for _, ok, _ in results)
    text = "\n".join(
        [
            "# The README's tour at reduced sizes",
            "",
            f"`python scripts/readme_tour.py` at commit {commit.stdout.strip() or '?'}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}: {passed} of {len(results)} commands passed.",
            "",
            "| README line | command | size options appended | result | seconds |",
            "| ---: | --- | --- | --- | ---: |",
            *rows,
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="only list the commands with their size options")
    ap.add_argument("--only", type=int, action="append", help="run only the command on this README line (repeatable)")
    ap.add_argument("--report", type=Path, help="also write a markdown summary here (e.g. reports/readme-tour.md)")
    ap.add_argument("--workdir", type=Path, help="run here (kept) instead of in a fresh temporary directory")
    ap.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        commands = tour(args.readme.read_text(encoding="utf-8"))
    except ValueError as e:
        print(f"readme_tour: {e}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {c.line for c in commands})
        if unknown:
            print(f"readme_tour: --only {unknown[0]}: no tour command starts on that README line", file=sys.stderr)
            return 2
        commands = [c for c in commands if c.line in args.only]
    if args.dry:
        for c in commands:
            print(f"README:{c.line:<3} {c.shell(extra=False)}\n           + {shlex.join(c.extra) or '(nothing)'}")
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vespo-tour-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    print(f"tour: {len(commands)} commands in {workdir}", flush=True)
    results = []
    for i, c in enumerate(commands, 1):
        log = workdir / "logs" / f"{i:02d}-{c.argv[0]}.log"
        ok, seconds = run(c, workdir, log)
        results.append((c, ok, seconds))
        print(f"{'PASS' if ok else 'FAIL'} {seconds:7.1f}s  README:{c.line:<3} {c.shell()}", flush=True)
        if not ok:
            print(_tail(log), flush=True)
    failed = sum(not ok for _, ok, _ in results)
    if args.report:
        write_report(args.report, results)
    if failed:
        print(f"tour: {failed} of {len(results)} failed; logs in {workdir / 'logs'}")
    else:
        print(f"tour: all {len(results)} passed")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
