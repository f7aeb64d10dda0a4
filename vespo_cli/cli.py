"""The `vespo` command: rollout, train, eval, compare (+ presets, inspect, bench)."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UserError, as_os_error, describe_os_error
from .interrupt import exit_status
from .rundir import checkpoint_of, default_dir

app = typer.Typer(
    name="vespo",
    help="Off-policy RL experiment runner for language models: VESPO and every baseline, "
    "with rollouts as replayable parquet shards.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)

PresetOpt = typer.Option(None, "--preset", "-p", help="Run preset: a name from `vespo presets` or a YAML path.")
AlgoOpt = typer.Option(None, "--algo", "-a", help="Algorithm preset: vespo, grpo, gspo, sapo, cispo, ...")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value: key.sub=value (repeatable).")


def _run_dir_opt(default: str):
    return typer.Option(
        None, "--out", "--run-dir", help=f"Run directory to write (default: {default}; --run-dir: alias)."
    )


def user_errors(fn: Callable) -> Callable:
    """Turn UserError (bad input: exit 2) and OSError (a fault of the machine: exit 1) into one line on
    stderr, naming the file and the cause; the traceback only with --debug or VESPO_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless a user error or a fault of the machine
            e = exc if isinstance(exc, UserError) else as_os_error(exc)
            if e is None or os.environ.get("VESPO_DEBUG") == "1":
                raise
            msg = describe_os_error(e) if isinstance(e, OSError) else str(e)
            err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1 if isinstance(e, OSError) else e.exit_code) from None
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM (interrupt.py): one line, exit 128 + signum
            err_console.print(escape(str(e) or "interrupted"), highlight=False, soft_wrap=True)
            raise typer.Exit(exit_status(e)) from None

    return wrapper


def _print_version(value: bool) -> None:
    """`vespo --version`: the installed distribution's version, then exit."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"vespo {version('vespo-cli')}", highlight=False)
        except PackageNotFoundError:  # a checkout run without installing it
            console.print("vespo (not installed: version unknown)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (also VESPO_DEBUG=1)."),
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
):
    if debug:
        os.environ["VESPO_DEBUG"] = "1"


def _config(preset: str | None, algo: str | None, overrides: list[str] | None, default_preset: str):
    from .config import load_config

    return load_config(preset or default_preset, algo, overrides or [])


def _default_run_dir(cfg, run_dir: Path | None, suffix: str = "") -> Path:
    if run_dir is not None:
        return run_dir
    return default_dir(f"{cfg.preset or 'run'}-{cfg.algorithm.name or cfg.algorithm.objective}{suffix}")


@app.command()
@user_errors
def rollout(
    preset: str | None = PresetOpt,
    algo: str | None = AlgoOpt,
    overrides: list[str] | None = SetOpt,
    run_dir: Path | None = _run_dir_opt("runs/<preset>-<algo>-rollout"),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Checkpoint dir or model spec (default: the preset's)."
    ),
    prompts: str | None = typer.Option(
        None, "--prompts", help="Prompt source (arith, gsm8k, dapo-math-17k, a .jsonl path, ...)."
    ),
    n: int | None = typer.Option(None, "--n", help="Samples per prompt."),
    num_prompts: int = typer.Option(16, "--num-prompts", help="Prompts to sample."),
    follow: Path | None = typer.Option(
        None, "--follow", help="Async worker: keep sampling with the newest checkpoint of this training run."
    ),
    worker: str = typer.Option("w0", "--worker", help="Worker name (async: one per process)."),
    shard_dir: Path | None = typer.Option(None, "--shard-dir", help="Where the shards go (default: OUT/rollouts)."),
):
    """Sample responses, score them with math-verify and write parquet shards."""
    from .rollout.run import rollout_follow, rollout_once

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", worker) or ".." in worker:  # it goes into file names
        raise UserError(f"--worker {worker!r}: expected a name of letters, digits, '_', '-' and '.' (e.g. w0)")

    if follow is not None:
        rollout_follow(follow, worker=worker, overrides=overrides or [])
        return
    extra = ([f"data.train={prompts}"] if prompts else []) + ([f"rollout.n={n}"] if n is not None else [])
    cfg = _config(preset, algo, [*(overrides or []), *extra], "smollm2-arith")
    rd = _default_run_dir(cfg, run_dir, "-rollout")
    rollout_once(cfg, rd, model=model, num_prompts=num_prompts, out=shard_dir, worker=worker)


@app.command()
@user_errors
def train(
    preset: str | None = PresetOpt,
    algo: str | None = AlgoOpt,
    overrides: list[str] | None = SetOpt,
    run_dir: Path | None = _run_dir_opt("runs/<preset>-<algo>"),
    replay: Path | None = typer.Option(
        None, "--replay", help="Train from existing shards in this directory (no sampling)."
    ),
    async_: bool = typer.Option(
        False, "--async", help="Rollout workers in separate processes; trainer consumes shards."
    ),
    resume: Path | None = typer.Option(None, "--resume", help="Continue a killed run from its last checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and plan; train nothing."),
):
    """Train a policy with an algorithm preset: synchronous, replay or async."""
    from .config import dump_yaml, load_resume_config

    if resume is not None:
        if preset or algo:
            raise UserError("--resume: the run's own config.yaml is used; drop --preset/--algo")
        cfg = load_resume_config(resume, overrides or [])  # docs/decisions.md: only trainer.steps, raised
        rd = resume
    else:
        cfg = _config(preset, algo, overrides, "smollm2-arith")
        rd = _default_run_dir(cfg, run_dir)
    if dry_run:
        from .dryrun import describe_plan

        console.print(dump_yaml(cfg), highlight=False, markup=False)
        plan = describe_plan(
            cfg, run_dir=rd, replay=replay, async_=async_, overrides=overrides or [], resume=resume is not None
        )
        console.print(plan, highlight=False, markup=False)
        return
    from .evaluate import training_eval
    from .train.loop import train as run_train

    run_train(cfg, rd, replay=replay, async_=async_, resume=resume is not None, evaluate=training_eval(cfg, rd))


@app.command("eval")
@user_errors
def eval_(
    benchmarks: list[str] = typer.Argument(
        ..., help="aime24 aime25 amc23 math500 gsm8k, arith (its held-out split), or a .jsonl path."
    ),
    model: str | None = typer.Option(None, "--model", "-m", help="Checkpoint dir or model spec."),
    preset: str | None = PresetOpt,
    overrides: list[str] | None = SetOpt,
    k: int | None = typer.Option(None, "--k", help="Samples per problem (default: the paper's k per benchmark)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N problems."),
    engine: str | None = typer.Option(None, "--engine", help="vllm or hf."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output directory (default: <run>/eval/step-K for a run's checkpoint, else runs/eval/<model>).",
    ),
):
    """Evaluate a model on math benchmarks: avg@k, pass@k with 95% intervals.

    A run's checkpoint is evaluated with its run's config.yaml (template, engine, dtype, lengths) unless --preset."""
    from .engines import ENGINES
    from .evaluate import eval_command

    if engine and engine not in ENGINES:
        raise UserError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    items = [*(overrides or []), *([f"rollout.engine={engine}"] if engine else [])]
    run = checkpoint_of(model) if model and not preset else None
    if run is not None and run[0].config.is_file():  # a run's checkpoint: that run's settings
        from .config import load_run_config
        from .progress import announce

        cfg = load_run_config(run[0].root, items)
        announce(f"settings: {run[0].config} (--preset to use others)")
    else:
        cfg = _config(preset, None, items, "smollm2-arith")
    eval_command(cfg, benchmarks, model=model, k=k, limit=limit, out=out)


@app.command()
@user_errors
def compare(
    items: list[str] = typer.Argument(..., help="Algorithm presets to run, or existing run directories to report."),
    preset: str | None = PresetOpt,
    overrides: list[str] | None = SetOpt,
    staleness: list[int] | None = typer.Option(None, "--staleness", "-N", help="Staleness values N (repeatable)."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per (algorithm, N)."),
    replay: Path | None = typer.Option(None, "--replay", help="Same shards for every algorithm."),
    out: Path | None = typer.Option(None, "--out", help="Report directory (default: runs/compare-<preset>)."),
    x: str = typer.Option("steps", "--x", help="Curves' x-axis: steps (optimizer steps) or samples (consumed)."),
    async_: bool = typer.Option(False, "--async", help="Train every run with async rollout workers (labelled +async)."),
    claims: str | None = typer.Option(
        None, "--claims", help="Claims the verdict tests: a name in presets/claims/ or a path (default vespo-paper)."
    ),
    planned_seeds: list[str] | None = typer.Option(
        None,
        "--planned-seeds",
        help="Seeds the verdict waits for: K (every N) or N=K (repeatable); rows short of them are interim. "
        "Default: the claims file's planned_seeds, and --seeds for the runs this compare trains.",
    ),
):
    """Run the same experiment under several algorithms (or report existing runs) side by side."""
    from .compare import compare_command

    compare_command(
        items,
        preset=preset,
        overrides=overrides or [],
        staleness=staleness or [],
        seeds=seeds,
        replay=replay,
        out=out,
        x=x,
        async_=async_,
        claims=claims,
        planned_seeds=planned_seeds or [],
    )


@app.command()
@user_errors
def probe(
    preset: str | None = PresetOpt,
    algos: list[str] | None = typer.Option(
        None,
        "--algo",
        "-a",
        help="Objectives to probe (repeatable; ALGO[:key=value]; default grpo gspo sapo cispo vespo).",
    ),
    overrides: list[str] | None = SetOpt,
    ages: list[int] | None = typer.Option(
        None,
        "--age",
        "-K",
        help="Age K of the behaviour data: optimizer steps since θ₀ sampled it (repeatable; default 0 1 4 16 64). "
        "Not `vespo compare`'s staleness N (optimizer steps per rollout batch).",
    ),
    old_ages: list[int] | None = typer.Option(None, "--staleness", hidden=True, help="Deprecated: --age."),
    prompts: int | None = typer.Option(
        None, "--prompts", help="Prompt groups of behaviour data (default 16; --quick 4)."
    ),
    shards: Path | None = typer.Option(
        None, "--shards", help="Behaviour data from these shards instead of sampling at θ₀."
    ),
    run: Path | None = typer.Option(
        None, "--run", help="θ_K from this run's checkpoints/step-K instead of K on-policy steps."
    ),
    blocks: int = typer.Option(2, "--blocks", help="Gradients of the last N decoder blocks + final norm."),
    bootstrap: int | None = typer.Option(
        None, "--bootstrap", help="Bootstrap resamples of prompt groups (default 1000)."
    ),
    reward: str = typer.Option(
        "auto",
        "--reward",
        help="auto (the preset's grader, else even-tokens where it gives every sample the same reward), "
        "grader, or even-tokens (synthetic).",
    ),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: 8 prompts, ages K 0 1 2 4, 200 resamples."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default: runs/probe-<preset>)."),
):
    """Measure how well each objective's gradient on stale data matches the on-policy gradient."""
    from .probe import probe_command

    if old_ages:
        err_console.print(
            "note: `vespo probe --staleness` is deprecated, use --age/-K (K optimizer steps since sampling; "
            "in `vespo compare`, --staleness is N)",
            highlight=False,
            soft_wrap=True,
        )
    path = probe_command(
        preset=preset,
        overrides=overrides or [],
        algos=algos or [],
        ages=(ages or []) + (old_ages or []),
        prompts=prompts,
        shards=shards,
        run=run,
        blocks=blocks,
        bootstrap=bootstrap,
        reward=reward,
        quick=quick,
        out=out,
    )
    console.print(f"probe: {path / 'report.md'}  (probe.json, *.png)")


@app.command()
@user_errors
def presets(check: str | None = typer.Option(None, "--check", help="Validate a preset and print its memory plan.")):
    """List run presets and algorithm presets with one-line descriptions."""
    from .presets import PRESETS_DIR, list_presets, preset_description, preset_path

    if check:
        from .config import load_config
        from .plan import check_preset

        console.print(check_preset(load_config(check)), highlight=False)
        return
    for kind, title in (("", "Run presets (--preset)"), ("algorithms", "Algorithm presets (--algo)")):
        table = Table(title=title, title_justify="left", show_edge=False)
        table.add_column("name", style="bold cyan")
        table.add_column("description")
        for name in list_presets(kind):
            table.add_row(name, preset_description(preset_path(name, kind)))
        console.print(table)
    console.print(f"[dim]presets directory: {PRESETS_DIR}[/]")


@app.command()
@user_errors
def inspect(path: Path = typer.Argument(..., help="A shard file, a shard directory or a run directory.")):
    """Summarise shards (one file, a directory, or a run's rollouts/) or a run.

    Shards: rows, policy versions, staleness, reward, engines, scoring failures. A run: also its training so far
    (steps, reward, collapse, evals, checkpoints) and the hardware each start of its trainer ran on."""
    from .inspection import inspect_table

    table, bad_shards = inspect_table(path)
    console.print(table)
    for b in bad_shards:
        err_console.print(f"[yellow]bad shard:[/] {escape(b)}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def bench(
    out: Path = typer.Option(Path("reports/bench"), "--out", help="Where latest.json and latest.md go."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes (smoke test)."),
):
    """Benchmark suite: end-to-end vs TRL, trainer MFU, rollout, objectives, shard I/O."""
    from .bench import run_bench

    run_bench(out, quick=quick)


def main() -> None:
    from .runtime import configure

    configure()
    app()


if __name__ == "__main__":
    sys.exit(main())
