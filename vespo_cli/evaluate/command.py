"""`vespo eval`: a model (or a run's checkpoint) on math benchmarks, with a results table; a
checkpoint's eval lines also join its run's metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

from ..data import load_problems
from ..errors import UserError
from ..progress import announce
from ..rundir import checkpoint_of, default_dir
from .driver import benchmark_name, encode_benchmarks, eval_sampling, run_eval
from .results import metrics_record


def default_eval_dir(model_path: str | Path, model_spec: str) -> Path:
    """`<run>/eval/step-K` for a run's checkpoint (as during training), else `runs/eval/<model>`."""
    ckpt = checkpoint_of(model_path)
    if ckpt is not None:
        return ckpt[0].eval_dir(ckpt[1])
    return default_dir("eval") / benchmark_name(Path(model_spec).name or model_spec)


def eval_command(
    cfg,
    benchmarks: Sequence[str],
    *,
    model: str | None = None,
    k: int | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
) -> dict[str, dict]:
    """`vespo eval`: open the configured engine on `model` (default cfg.model.path) and run `run_eval`."""
    from rich.console import Console

    from ..models import load_tokenizer, resolve_model
    from ..rewards import scorer_for
    from ..rollout.sampling import open_engine

    benchmarks, k, limit = _arguments(cfg, benchmarks, k, limit)
    model_spec = model or cfg.model.path
    model_path = resolve_model(model_spec, trust_remote_code=cfg.model.trust_remote_code)
    out_dir = Path(out) if out is not None else default_eval_dir(model_path, model_spec)
    sampling = eval_sampling(cfg)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    err = Console(stderr=True)
    encoded = encode_benchmarks(
        tokenizer, benchmarks, limit, cfg.data.template, cfg.eval.max_prompt_tokens, cfg.data.difficulty
    )
    for bench, enc in encoded.items():
        if enc.skipped:
            err.print(
                f"[yellow]{bench}: {len(enc.skipped)} of {len(enc.skipped) + len(enc.problems)} prompts longer than "
                f"eval.max_prompt_tokens={enc.budget} skipped[/]",
                highlight=False,
            )
    longest = max(len(p) for enc in encoded.values() for p in enc.prompts)
    ecfg = cfg.model_copy(  # the engine fits the longest prompt kept and the eval's response budget
        update={
            "data": cfg.data.model_copy(update={"max_prompt_tokens": longest}),
            "rollout": cfg.rollout.model_copy(update={"max_tokens": max(cfg.rollout.max_tokens, cfg.eval.max_tokens)}),
        }
    )
    announce(f"loading model {model_path} ({ecfg.rollout.engine} engine) …")
    engine = open_engine(ecfg, model_path)
    try:
        with scorer_for(cfg) as scorer:
            results = run_eval(
                engine,
                tokenizer,
                benchmarks,
                k,
                limit,
                sampling,
                cfg.data.template,
                out_dir,
                scorer,
                extra_summary={"model": str(model_path)},
                difficulty=cfg.data.difficulty,
                encoded=encoded,
                on_chunk=lambda b, done, total: err.print(f"[dim]{b}: {done}/{total} problems[/]"),
            )
    finally:
        engine.close()
    Console().print(_table(model_spec, results))
    err.print(f"results: {out_dir}")
    _append_to_run(model_path, results, err, out_dir)
    return results


def _arguments(
    cfg, benchmarks: Sequence[str], k: int | None, limit: int | None
) -> tuple[list[str], int | None, int | None]:
    """(benchmarks, k, limit) with the config's defaults filled in, checked before a model is loaded."""
    benchmarks = list(benchmarks) or list(cfg.eval.benchmarks)
    if not benchmarks:
        raise UserError("eval: no benchmarks given (expected e.g. aime24 math500, or eval.benchmarks in the preset)")
    k = k if k is not None else cfg.eval.k
    limit = limit if limit is not None else cfg.eval.limit
    if k is not None and k < 1:
        raise UserError(f"--k {k}: expected a positive integer")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: expected a positive integer")
    for b in benchmarks:  # fail on a bad name before loading a model
        load_problems(b, limit=1)
    return benchmarks, k, limit


def _table(model_spec: str, results: dict[str, dict]):
    """The results table: one row per benchmark, percentages."""
    from rich.table import Table

    table = Table(title=f"eval: {model_spec}", title_justify="left", show_edge=False)
    for col in ("benchmark", "metric", "value", "95% CI", "pass@k", "tokens", "truncated", "skipped"):
        table.add_column(col)
    for name, s in results.items():
        lo, hi = s["ci95_low"], s["ci95_high"]
        table.add_row(
            name,
            s["metric"],
            f"{100 * s['avg_at_k']:.1f}",
            f"[{100 * lo:.1f}, {100 * hi:.1f}]",
            f"{100 * s['pass_at_k']:.1f}",
            f"{s.get('mean_response_tokens', 0):.0f}",
            f"{100 * s.get('truncated_fraction', 0):.0f}%",
            str(s.get("skipped_prompts", 0)),
        )
    return table


def _append_to_run(model_path: str | Path, results: dict[str, dict], err, out_dir: Path) -> None:
    """A run's checkpoint: its eval lines join the run's metrics (`kind: eval` at the checkpoint's step),
    under the run's lock (lock.py: a trainer rewrites metrics.jsonl on resume); refused with one line
    while another process holds it, the results staying in `out_dir`."""
    ckpt = checkpoint_of(model_path)
    if ckpt is None:
        return
    from ..fsio import append_jsonl
    from ..lock import hold

    run, step = ckpt
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold(run.root, "vespo eval"))
        except UserError as e:
            raise UserError(f"{e} (eval lines not appended to {run.metrics}; the results are in {out_dir})") from None
        for s in results.values():
            append_jsonl(run.metrics, {"kind": "eval", "step": step, "time": time.time(), **metrics_record(s)})
    err.print(f"appended to {run.metrics}")
