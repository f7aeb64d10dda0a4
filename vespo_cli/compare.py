"""`vespo compare`: the same experiment under several algorithms, side by side.

Given algorithm presets (`vespo grpo vespo:length_norm=sqrt`), every (algorithm, staleness N, seed)
is trained into `OUT/runs/<label>-N<N>-s<seed>` from the same preset, data order and seed (and the
same shards with `--replay`); complete runs are reused and partial ones resumed. Given run
directories, it only reports. The report is `OUT/report.md` (table + definitions + plots),
`OUT/summary.json` (the table's numbers, per run and per group) and `OUT/*.png`.

Everything below the command is a pure function of `metrics.jsonl` records, so the report of a run
can be recomputed at any time, also while it trains.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import yaml

from .errors import UserError
from .fsio import atomic_path, atomic_write_json, atomic_write_text, read_jsonl

# --------------------------------------------------------------------------- definitions
DROP = 0.5  # collapse: smoothed reward below DROP × best-so-far ...
PATIENCE_FRAC = 0.1  # ... for max(MIN_PATIENCE, PATIENCE_FRAC × steps) consecutive steps ...
MIN_PATIENCE = 3
FLOOR = 0.05  # ... counted only once the best smoothed reward exceeds FLOOR ("never learned" otherwise)
NOISE_Z = 3.0  # ... and, for rewards in [0, 1], only where the drop exceeds NOISE_Z standard errors
SMOOTH_FRAC = 0.05  # moving-average window: max(MIN_WINDOW, SMOOTH_FRAC × steps) steps
MIN_WINDOW = 3
FINAL_FRAC = 0.1  # final reward: mean over the last 10% of steps
NONFINITE_KEYS = ("loss", "grad_norm")
ALGO_FIELDS = {"objective", "correction", "correction_cap", "routing_replay"}  # `algo:key=v` → algorithm.key
REFRESH_AFTER_S = 60.0  # rewrite the report after each run that trained longer than this
RUN_NAME = re.compile(r"^(?P<label>.+)-N(?P<n>\d+)-s(?P<seed>\d+)$")


def train(cfg, run_dir: Path, *, replay: Optional[Path] = None, resume: bool = False) -> dict:
    """Run the trainer in a child process (tests replace this name).

    One process per run: a long sweep does not accumulate engine and allocator memory, and a run
    that dies (OOM, a crash in a native library) fails alone, with its exit code, and can be resumed."""
    import subprocess
    import sys

    from .config import dump_yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(dump_yaml(cfg))
    try:
        proc = subprocess.run([sys.executable, "-m", "vespo_cli.compare", f.name, str(run_dir),
                               str(replay) if replay else "", "1" if resume else "0"])
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise UserError(f"{run_dir}: training exited with code {proc.returncode}; "
                        f"rerun the same compare to resume it")
    return {}


def _train_child(config_path: str, run_dir: str, replay: str, resume: str) -> None:
    """Child side of `train`: the resolved config from a YAML file, then the trainer in-process."""
    from .config import Config, from_dict
    from .train.loop import train as run_train

    cfg = from_dict(Config, yaml.safe_load(Path(config_path).read_text()))
    run_train(cfg, Path(run_dir), replay=Path(replay) if replay else None, resume=resume == "1")


# --------------------------------------------------------------------------- pure metrics functions


def _num(x: Any) -> float:
    """A metric value as float; NaN when missing or not a number."""
    if x is None or isinstance(x, bool):
        return math.nan if x is None else float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def train_records(records: Iterable[dict]) -> list[dict]:
    """Training lines sorted by step (a resumed run's repeated step: the last line wins)."""
    by_step: dict[int, dict] = {}
    for r in records:
        if r.get("kind", "train") == "train" and isinstance(r.get("step"), (int, float)):
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def eval_records(records: Iterable[dict]) -> list[dict]:
    return sorted((r for r in records if r.get("kind") == "eval" and "benchmark" in r),
                  key=lambda r: (str(r["benchmark"]), _num(r.get("step"))))


def smooth_window(steps: int) -> int:
    """Moving-average window for a run of `steps` steps: max(3, 5% of steps), at most `steps`."""
    return max(1, min(int(steps), max(MIN_WINDOW, round(SMOOTH_FRAC * steps))))


def default_patience(steps: int) -> int:
    return max(MIN_PATIENCE, math.ceil(PATIENCE_FRAC * steps))


def trailing_sums(values: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) of the finite values among the last `window` values at each position."""
    v = np.asarray([_num(x) for x in values], dtype=float)
    ok = np.isfinite(v)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(v))
    lo = np.maximum(0, i + 1 - max(int(window), 1))
    return cs[i + 1] - cs[lo], cn[i + 1] - cn[lo]


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last `window` values (fewer at the start); non-finite values are
    left out of the mean, and a window holding none gives NaN."""
    s, n = trailing_sums(values, window)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def window_stderr(smoothed: np.ndarray, rows: Sequence[dict], window: int) -> Optional[np.ndarray]:
    """Standard error of each window's mean reward from the samples behind it (Σ n_seqs), with the
    per-sample variance bounded by μ(1 − μ), the Bhatia–Davis bound for rewards in [0, 1]. None
    when the records do not say how many samples a step had or a reward falls outside [0, 1]."""
    rewards = np.asarray([_num(r.get("reward")) for r in rows], dtype=float)
    counts = [_num(r.get("n_seqs")) for r in rows]
    finite = rewards[np.isfinite(rewards)]
    if not all(math.isfinite(c) and c > 0 for c in counts) or ((finite < 0) | (finite > 1)).any():
        return None
    n = trailing_sums(np.where(np.isfinite(rewards), counts, np.nan), window)[0]
    mu = np.clip(smoothed, 0.0, 1.0)
    return np.sqrt(mu * (1 - mu) / np.maximum(n, 1))


def detect_collapse(records: Sequence[dict], *, drop: float = DROP, patience: Optional[int] = None,
                    window: Optional[int] = None, floor: float = FLOOR,
                    total_steps: Optional[int] = None, noise_z: float = NOISE_Z) -> dict:
    """Where (if at all) a run collapsed, from its metrics records (pure).

    The run collapsed at the first step where (a) `loss` or `grad_norm` is non-finite (or the trainer
    flagged `skipped_nonfinite`), or (b) the trailing moving average of the reward (over `window`
    steps) is below `drop` × its best value so far for `patience` consecutive steps, counted only
    once that best exceeds `floor` and, when the records carry `n_seqs` and rewards lie in [0, 1],
    only where best − average exceeds `noise_z` standard errors of the two window means (a drop that
    the sampling noise of a few samples per step explains is not one); for (b) the step reported is
    the first of those steps.
    Defaults: window max(3, 5%) and patience max(3, 10%) of `total_steps` (or of the steps logged).
    Returns {"status": "collapsed" | "stable" | "never learned" | "no data", "step", "reason",
    "best_reward", "best_step", "window", "patience", "drop", "floor", "noise_z"}."""
    rows = train_records(records)
    steps_ref = total_steps or len(rows) or 1
    window = window or smooth_window(steps_ref)
    patience = patience or default_patience(steps_ref)
    out = {"status": "no data", "step": None, "reason": None, "best_reward": None, "best_step": None,
           "window": window, "patience": patience, "drop": drop, "floor": floor, "noise_z": noise_z}
    if not rows:
        return out
    smoothed = moving_average([r.get("reward") for r in rows], window)
    stderr = window_stderr(smoothed, rows, window)
    best, best_step, best_se, streak, start = -math.inf, None, 0.0, 0, None
    for i, (r, s) in enumerate(zip(rows, smoothed)):
        step = int(r["step"])
        bad = [k for k in NONFINITE_KEYS if k in r and not math.isfinite(_num(r[k]))]
        if bad or r.get("skipped_nonfinite"):
            reason = f"non-finite {bad[0]}" if bad else "non-finite gradient (step skipped)"
            return {**out, "status": "collapsed", "step": step, "reason": reason,
                    "best_reward": best if best_step is not None else None, "best_step": best_step}
        if not math.isfinite(s):
            continue
        se = 0.0 if stderr is None else float(stderr[i])
        if s > best:
            best, best_step, best_se = float(s), step, se
        if best > floor and s < drop * best and best - s > noise_z * math.hypot(best_se, se):
            streak += 1
            start = step if start is None else start
            if streak >= patience:
                return {**out, "status": "collapsed", "step": start, "reason": "reward drop",
                        "best_reward": best, "best_step": best_step}
        else:
            streak, start = 0, None
    status = "stable" if best > floor else "never learned"
    return {**out, "status": status, "best_reward": best if best_step is not None else None,
            "best_step": best_step}


def _finite_mean(values: Iterable[Any]) -> Optional[float]:
    v = [x for x in (_num(y) for y in values) if math.isfinite(x)]
    return sum(v) / len(v) if v else None


def _series_key(rows: Sequence[dict], keys: Sequence[str]) -> Optional[str]:
    """The first of `keys` that has a finite value in some row."""
    for k in keys:
        if any(math.isfinite(_num(r.get(k))) for r in rows):
            return k
    return None


def summarize_run(records: Sequence[dict], total_steps: Optional[int] = None,
                  window: Optional[int] = None) -> dict:
    """The report's numbers for one run (pure)."""
    rows = train_records(records)
    n = len(rows)
    window = window or smooth_window(total_steps or n or 1)
    tail = rows[-max(1, math.ceil(FINAL_FRAC * n)):] if rows else []
    smoothed = moving_average([r.get("reward") for r in rows], window)
    best = float(np.nanmax(smoothed)) if np.isfinite(smoothed).any() else None
    weight_key = _series_key(rows, ("suppressed_frac", "clip_frac"))
    evals: dict[str, dict] = {}
    for e in eval_records(records):  # the last eval of each benchmark
        evals[str(e["benchmark"])] = {
            "step": e.get("step"), "k": e.get("k"), "avg_at_k": _opt(e.get("avg_at_k")),
            "pass_at_k": _opt(e.get("pass_at_k")), "ci95_low": _opt(e.get("ci95_low")),
            "ci95_high": _opt(e.get("ci95_high")),
        }
    times = [sum(_num(r.get(k)) for k in ("rollout_s", "logprob_s", "train_s") if math.isfinite(_num(r.get(k))))
             for r in rows]
    return {
        "steps_done": int(rows[-1]["step"]) if rows else 0,
        "steps_total": total_steps,
        "final_reward": _finite_mean(r.get("reward") for r in tail),
        "best_reward": best,
        "ess_mean": _finite_mean(r.get("ess") for r in rows),
        "weight_metric": weight_key,  # suppressed_frac (vespo) or clip_frac (clipped objectives)
        "weight_frac_mean": _finite_mean(r.get(weight_key) for r in rows) if weight_key else None,
        "nonfinite_steps": sum(1 for r in rows if r.get("skipped_nonfinite")
                               or any(k in r and not math.isfinite(_num(r[k])) for k in NONFINITE_KEYS)),
        "time_s": sum(times) if rows else None,
        "collapse": detect_collapse(rows, window=window, total_steps=total_steps),
        "eval": evals,
    }


def _opt(x: Any) -> Optional[float]:
    v = _num(x)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- what to run / report


@dataclass
class RunSpec:
    label: str  # algorithm (+ variant) or run-directory name: one curve per label
    staleness: int
    seed: int
    path: Path
    algo: Optional[str] = None  # None: an existing run directory (report only)
    overrides: list[str] = field(default_factory=list)
    cfg: Any = None
    steps: Optional[int] = None


def parse_algo_item(item: str) -> tuple[str, list[str], str]:
    """`vespo:length_norm=sqrt,c1_neg=2` → ("vespo", ["algorithm.params.length_norm=sqrt", ...],
    "vespo+length_norm=sqrt+c1_neg=2"). A key that is an algorithm field (correction, ...) sets
    algorithm.KEY; a dotted key (trainer.lr) is used as given; any other key is a parameter."""
    from .config import preset_path

    name, _, variant = item.partition(":")
    if not name:
        raise UserError(f"{item}: expected ALGO or ALGO:key=value[,key=value]")
    if "/" in name and not name.endswith((".yaml", ".yml")):
        raise UserError(f"{item}: no such run directory (nor an algorithm preset)")
    preset_path(name, "algorithms")  # unknown algorithm → one-line error listing the known ones
    overrides, parts = [], []
    for part in re.split(r",(?=\s*[\w.]+\s*=)", variant) if variant else []:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[\w.]+", key):
            raise UserError(f"{item}: expected ALGO:key=value[,key=value], got {part!r}")
        dotted = key if "." in key else f"algorithm.{key}" if key in ALGO_FIELDS else f"algorithm.params.{key}"
        overrides.append(f"{dotted}={value.strip()}")
        parts.append(f"{key}={value.strip()}")
    label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    label = "+".join([label] + parts)
    return name, overrides, re.sub(r"[^A-Za-z0-9._=+-]", "_", label)


def _read_run_config(run_dir: Path) -> dict:
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{run_dir / 'config.yaml'}: cannot read ({e})") from None
    return data if isinstance(data, dict) else {}


def existing_run(run_dir: Path) -> RunSpec:
    """A run directory to report: label, N and seed from its name `<label>-N<N>-s<seed>` (as compare
    names them) or else its directory name and its config."""
    data = _read_run_config(run_dir)
    trainer = data.get("trainer") or {}
    n, seed, steps = trainer.get("staleness", 1), trainer.get("seed", 0), trainer.get("steps")
    m = RUN_NAME.match(run_dir.name)
    label = m["label"] if m else run_dir.name
    return RunSpec(label=label, staleness=int(n), seed=int(seed), path=run_dir,
                   steps=int(steps) if isinstance(steps, int) else None)


def _run_dirs(item: str) -> list[Path]:
    """A run directory, or a compare output directory (its runs/*)."""
    p = Path(item)
    if (p / "config.yaml").is_file():
        return [p]
    inner = sorted(d for d in (p / "runs").glob("*") if (d / "config.yaml").is_file())
    if inner:
        return inner
    raise UserError(f"{item}: not a run directory (no config.yaml) nor a compare directory (no runs/*/config.yaml)")


def _is_complete(run_dir: Path, steps: int) -> bool:
    rows = train_records(read_jsonl(run_dir / "metrics.jsonl"))
    return bool(rows) and int(rows[-1]["step"]) >= steps


def _config_mismatch(run_dir: Path, cfg) -> list[str]:
    """Keys whose value in the run's config.yaml differs from the config compare would run."""
    from .config import dump_yaml

    want, have = yaml.safe_load(dump_yaml(cfg)), _read_run_config(run_dir)
    diffs: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix[:-1]}: {b!r} there, {a!r} now")

    walk(want, have, "")
    return diffs


def compare_command(items: Sequence[str], *, preset: Optional[str] = None, overrides: Sequence[str] = (),
                    staleness: Sequence[int] = (), seeds: int = 1, replay: Optional[Path] = None,
                    out: Optional[Path] = None) -> Path:
    """Run (or reuse) every (algorithm, N, seed) and/or collect run directories; write the report.
    Returns the report path."""
    from .config import load_config

    if not items:
        raise UserError("compare: expected algorithm presets or run directories")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected a positive integer")
    for n in staleness:
        if n < 1:
            raise UserError(f"--staleness {n}: expected a positive integer")
    algos = [i for i in items if not Path(i).is_dir()]
    dirs = [d for i in items if Path(i).is_dir() for d in _run_dirs(i)]
    if not algos:
        for flag, given in (("--staleness", staleness), ("--set", overrides), ("--replay", replay)):
            if given:
                raise UserError(f"{flag}: only used when running algorithms; run directories are reported as they are")
    if replay is not None and not Path(replay).is_dir():
        raise UserError(f"--replay {replay}: no such directory")

    specs: list[RunSpec] = []
    if algos:
        preset = preset or "smollm2-arith"
        if out is None:
            out = Path("runs") / f"compare-{Path(preset).stem}"
        parsed = [parse_algo_item(a) for a in algos]
        labels = [p[2] for p in parsed]
        if len(set(labels)) != len(labels):
            raise UserError(f"compare: algorithm given twice ({', '.join(labels)})")
        for (name, extra, label), item in zip(parsed, algos):  # every config first: a typo fails before training
            try:
                base = load_config(preset, name, list(overrides) + extra)
            except UserError as e:
                raise UserError(f"{item}: {e}" if extra else str(e)) from None
            for n in staleness or [base.trainer.staleness]:
                for s in range(seeds):
                    seed = base.trainer.seed + s
                    ov = list(overrides) + extra + [f"trainer.staleness={n}", f"trainer.seed={seed}"]
                    cfg = load_config(preset, name, ov)
                    specs.append(RunSpec(label, cfg.trainer.staleness, seed, Path(out) / "runs" / f"{label}-N{n}-s{seed}",
                                         algo=name, overrides=ov, cfg=cfg, steps=cfg.trainer.steps))
    for d in dirs:
        specs.append(existing_run(d))
    if out is None:
        presets = {(_read_run_config(s.path).get("preset") or "") for s in specs}
        out = Path("runs") / (f"compare-{presets.pop()}" if len(presets) == 1 and "" not in presets else "compare")
    specs = _dedupe(specs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    from rich.console import Console

    console = Console(stderr=True)
    to_run = [s for s in specs if s.algo is not None]
    for k, spec in enumerate(to_run, 1):
        head = f"[{k}/{len(to_run)}] {spec.label} N={spec.staleness} seed={spec.seed}"
        t0 = time.monotonic()
        if (spec.path / "config.yaml").is_file():
            diffs = _config_mismatch(spec.path, spec.cfg)
            if diffs:
                raise UserError(f"{spec.path}: holds a run with another config ({'; '.join(diffs[:3])}); "
                                f"pick another --out or remove it")
            if _is_complete(spec.path, spec.steps):
                console.print(f"{head}: complete, reused ({spec.path})", highlight=False)
                continue
            console.print(f"{head}: partial, resuming ({spec.path})", highlight=False)
            train(spec.cfg, spec.path, replay=replay, resume=True)
        else:
            console.print(f"{head}: training ({spec.path})", highlight=False)
            train(spec.cfg, spec.path, replay=replay, resume=False)
        if k < len(to_run) and time.monotonic() - t0 > REFRESH_AFTER_S:  # long runs: a report to look at meanwhile
            write_report(specs, out, settings=_settings(items, preset, overrides, staleness, seeds, replay))
    report = write_report(specs, out, settings=_settings(items, preset, overrides, staleness, seeds, replay))
    console.print(f"report: {report}", highlight=False)
    return report


def _settings(items, preset, overrides, staleness, seeds, replay) -> dict:
    return {"items": list(items), "preset": preset, "overrides": list(overrides), "staleness": list(staleness),
            "seeds": seeds, "replay": str(replay) if replay else None}


def _dedupe(specs: list[RunSpec]) -> list[RunSpec]:
    """One spec per directory; run directories with equal (label, N, seed) get their parent in the label."""
    seen: dict[Path, RunSpec] = {}
    for s in specs:
        seen.setdefault(s.path.resolve(), s)
    specs = list(seen.values())
    keys: dict[tuple, int] = {}
    for s in specs:
        keys[(s.label, s.staleness, s.seed)] = keys.get((s.label, s.staleness, s.seed), 0) + 1
    for s in specs:
        if keys[(s.label, s.staleness, s.seed)] > 1 and s.algo is None:
            s.label = f"{s.path.parent.name}/{s.label}"
    return specs


# --------------------------------------------------------------------------- report


@dataclass
class Loaded:
    spec: RunSpec
    rows: list[dict]
    evals: list[dict]
    summary: dict


FIGURES: list[tuple[str, str, list[tuple[str, tuple[str, ...]]]]] = [
    ("reward.png", "Reward and training accuracy", [("reward", ("reward",)), ("accuracy", ("accuracy",))]),
    ("response_length.png", "Response length", [("response length (tokens)", ("response_length",))]),
    ("entropy.png", "Policy entropy on response tokens", [("entropy (nats)", ("entropy",))]),
    ("grad_norm.png", "Gradient norm (before clipping)", [("grad norm", ("grad_norm",))]),
    ("weights.png", "Importance weights", [("mean log W", ("log_w_mean",)), ("max log W", ("log_w_max",)),
                                           ("ESS / n", ("ess",)),
                                           ("suppressed (φ<1e-3) / clip frac", ("suppressed_frac", "clip_frac"))]),
    ("offpolicy.png", "Off-policyness", [("staleness (steps)", ("staleness",)), ("mean |Δ|", ("delta_abs_mean",)),
                                         ("mismatch KL", ("mismatch_kl",))]),
]


def load_runs(specs: Sequence[RunSpec]) -> tuple[list[Loaded], int]:
    """Read every run's metrics; one smoothing window for all (from the longest run)."""
    records = [read_jsonl(s.path / "metrics.jsonl") for s in specs]
    rows = [train_records(r) for r in records]
    window = smooth_window(max([s.steps or 0 for s in specs] + [len(r) for r in rows] + [1]))
    loaded = [Loaded(s, tr, eval_records(rec), summarize_run(rec, total_steps=s.steps, window=window))
              for s, rec, tr in zip(specs, records, rows)]
    return loaded, window


def write_report(specs: Sequence[RunSpec], out: Path, settings: Optional[dict] = None) -> Path:
    """report.md + summary.json + PNGs in `out` for these runs (reads their metrics.jsonl)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, window = load_runs(specs)
    groups = _groups(runs)
    images = plot_all(runs, groups, out, window)
    summary = {
        "settings": {**(settings or {}), "smooth_window": window, "final_frac": FINAL_FRAC,
                     "collapse": {"drop": DROP, "patience_frac": PATIENCE_FRAC, "min_patience": MIN_PATIENCE,
                                  "floor": FLOOR, "noise_z": NOISE_Z}},
        "groups": [_group_summary(key, members) for key, members in groups.items()],
        "runs": [{"label": r.spec.label, "staleness": r.spec.staleness, "seed": r.spec.seed,
                  "path": os.path.relpath(r.spec.path, out), **r.summary} for r in runs],
        "figures": images,
    }
    atomic_write_json(out / "summary.json", _jsonable(summary))
    path = out / "report.md"
    atomic_write_text(path, render_markdown(summary, runs, window, images, out))
    return path


def _groups(runs: Sequence[Loaded]) -> dict[tuple[str, int], list[Loaded]]:
    groups: dict[tuple[str, int], list[Loaded]] = {}
    for r in runs:
        groups.setdefault((r.spec.label, r.spec.staleness), []).append(r)
    return {k: sorted(v, key=lambda r: r.spec.seed) for k, v in sorted(groups.items(), key=lambda kv: (kv[0][1],))}


def _stats(values: Iterable[Optional[float]]) -> Optional[dict]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "n": len(v)}


def _group_summary(key: tuple[str, int], members: list[Loaded]) -> dict:
    label, n = key
    sums = [m.summary for m in members]
    benches = sorted({b for s in sums for b in s["eval"]})
    evals = {}
    for b in benches:
        es = [s["eval"][b] for s in sums if b in s["eval"]]
        evals[b] = {"k": sorted({e["k"] for e in es if e.get("k") is not None}),
                    "avg_at_k": _stats(e["avg_at_k"] for e in es), "pass_at_k": _stats(e["pass_at_k"] for e in es),
                    "ci95_low": _stats(e["ci95_low"] for e in es), "ci95_high": _stats(e["ci95_high"] for e in es)}
    keys = {s["weight_metric"] for s in sums if s["weight_metric"]}
    return {
        "label": label, "staleness": n, "seeds": [m.spec.seed for m in members],
        "steps_done": [s["steps_done"] for s in sums], "steps_total": [s["steps_total"] for s in sums],
        "final_reward": _stats(s["final_reward"] for s in sums),
        "best_reward": _stats(s["best_reward"] for s in sums),
        "ess_mean": _stats(s["ess_mean"] for s in sums),
        "weight_metric": "/".join(sorted(keys)) or None,
        "weight_frac_mean": _stats(s["weight_frac_mean"] for s in sums),
        "time_s": _stats(s["time_s"] for s in sums),
        "collapse": [dict(seed=m.spec.seed, **{k: s["collapse"][k] for k in ("status", "step", "reason")})
                     for m, s in zip(members, sums)],
        "eval": evals,
    }


def _jsonable(x: Any) -> Any:
    """Non-finite floats → null (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# --------------------------------------------------------------------------- markdown


def _f(st: Optional[dict], digits: int = 3, pct: bool = False) -> str:
    """mean, plus (min–max) over seeds when there are several."""
    if not st:
        return "–"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    fmt = lambda v: f"{v * scale:.{digits}f}{unit}"  # noqa: E731
    if st["n"] > 1 and fmt(st["min"]) != fmt(st["max"]):
        return f"{fmt(st['mean'])} ({fmt(st['min'])}–{fmt(st['max'])})"
    return fmt(st["mean"])


def _collapse_cell(entries: list[dict]) -> str:
    if len(entries) == 1:
        e = entries[0]
        return f"step {e['step']} ({e['reason']})" if e["status"] == "collapsed" else e["status"]
    statuses = [e["status"] for e in entries]
    if len(set(statuses)) == 1 and statuses[0] != "collapsed":
        return statuses[0]
    parts = []
    col = [e for e in entries if e["status"] == "collapsed"]
    if col:
        parts.append(f"{len(col)}/{len(entries)} collapsed (step {', '.join(str(e['step']) for e in col)})")
    for st in ("never learned", "no data"):
        c = statuses.count(st)
        if c:
            parts.append(f"{c}/{len(entries)} {st}")
    if not parts:
        return "stable"
    return "; ".join(parts)


def _eval_cell(ev: Optional[dict], show_k: bool) -> str:
    if not ev or not ev["avg_at_k"]:
        return "–"
    avg, lo, hi = ev["avg_at_k"], ev["ci95_low"], ev["ci95_high"]
    cell = f"{avg['mean'] * 100:.1f}"
    if avg["n"] == 1 and lo and hi:
        cell += f" [{lo['mean'] * 100:.1f}, {hi['mean'] * 100:.1f}]"
    elif avg["n"] > 1 and avg["min"] != avg["max"]:
        cell += f" (seeds {avg['min'] * 100:.1f}–{avg['max'] * 100:.1f})"
    if show_k and ev["k"]:
        cell += f" @{'/'.join(str(k) for k in ev['k'])}"
    return cell


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(summary: dict, runs: Sequence[Loaded], window: int, images: list[dict], out: Path) -> str:
    st = summary["settings"]
    groups = summary["groups"]
    multi_seed = any(len(g["seeds"]) > 1 for g in groups)
    lines = ["# vespo compare", ""]
    setup = []
    if st.get("preset"):
        setup.append(f"preset `{st['preset']}`")
    if st.get("items"):
        setup.append("items " + ", ".join(f"`{i}`" for i in st["items"]))
    if st.get("overrides"):
        setup.append("overrides " + ", ".join(f"`--set {o}`" for o in st["overrides"]))
    if st.get("replay"):
        setup.append(f"replayed shards `{st['replay']}` (identical data for every algorithm)")
    setup.append(f"{len(runs)} run(s), {len(groups)} (algorithm, N) group(s)")
    lines += ["Setup: " + "; ".join(setup) + ".", ""]

    benches = sorted({b for g in groups for b in g["eval"]})
    ks = {b: {k for g in groups for k in g["eval"].get(b, {}).get("k", [])} for b in benches}
    header = ["algorithm", "N", "seeds", "steps", "final reward", "best reward (MA)"]
    header += [f"{b} avg@{next(iter(ks[b]))} % [95% CI]" if len(ks[b]) == 1 else f"{b} avg@k % [95% CI]"
               for b in benches]
    header += ["collapse", "mean ESS/n", "suppressed / clip frac", "time (s)"]
    rows = []
    for g in groups:
        done, total = g["steps_done"], g["steps_total"]
        steps = f"{min(done)}" + (f"/{total[0]}" if total and total[0] and min(done) < total[0] else "")
        wm = g["weight_metric"]
        weight = _f(g["weight_frac_mean"]) + (f" ({'supp.' if wm == 'suppressed_frac' else 'clip' if wm == 'clip_frac' else wm})"
                                              if wm and g["weight_frac_mean"] else "")
        time_st = g["time_s"]
        rows.append([g["label"], str(g["staleness"]), str(len(g["seeds"])), steps, _f(g["final_reward"]),
                     _f(g["best_reward"])]
                    + [_eval_cell(g["eval"].get(b), len(ks[b]) > 1) for b in benches]
                    + [_collapse_cell(g["collapse"]), _f(g["ess_mean"]), weight, _f(time_st, 0)])
    lines += ["## Results", ""] + _table(header, rows) + [""]
    if multi_seed:
        lines += ["Several seeds: each cell is the mean over seeds, with (min–max over seeds).", ""]

    c = st["collapse"]
    lines += [
        "## Definitions", "",
        f"- **Smoothing**: trailing moving average over the last **{window}** optimizer steps "
        f"(max({MIN_WINDOW}, {SMOOTH_FRAC:.0%} of the longest run's steps)); plots show it as the solid line "
        "over the faint raw curve. With several seeds a curve is the mean over seeds and the band spans min–max.",
        f"- **Final reward**: mean training reward over the last {FINAL_FRAC:.0%} of logged steps (at least one).",
        "- **Best reward (MA)**: the highest value of the smoothed training reward.",
        "- **Eval**: the last eval line of each benchmark: avg@k (mean accuracy over k samples per problem), "
        "in %, with its 95% interval `[low, high]` as logged by `vespo eval`.",
        f"- **Collapse**: a run *collapsed* at the first step where either `loss` or `grad_norm` is non-finite "
        f"(or the trainer skipped a step for a non-finite gradient), or the smoothed reward stays below "
        f"{c['drop']:.0%} of its best smoothed value so far, by more than {c.get('noise_z', NOISE_Z):g} standard errors "
        f"of the two window means (samples per window from `n_seqs`; variance ≤ μ(1 − μ) for rewards in [0, 1]), "
        f"for M consecutive steps, "
        f"M = max({c['min_patience']}, {c['patience_frac']:.0%} of the run's steps); the step given is the first "
        f"of those M. The drop rule only applies once the best smoothed reward exceeds {c['floor']}: a run that "
        "never gets there is *never learned*, not collapsed. Otherwise the run is *stable*.",
        "- **ESS/n**: effective sample size of the sequence weights, (Σw)²/(Σw²)/n, averaged over steps.",
        "- **Suppressed / clip frac**: for VESPO the fraction of sequences with φ(W) < 1e-3 (`suppressed_frac`); "
        "for clipped objectives the fraction of tokens whose gradient was clipped (`clip_frac`); mean over steps.",
        "- **Time**: rollout + old-logprob + training seconds summed over steps (no checkpointing or model "
        "loading; a resumed run's pause is not counted).",
        "",
    ]
    if images:
        lines += ["## Curves", ""]
        for im in images:
            lines += [f"### {im['title']}", "", f"![{im['title']}]({im['file']})", ""]
    lines += ["## Runs", ""]
    run_rows = []
    for r in runs:
        s = r.summary
        col = s["collapse"]
        run_rows.append([r.spec.label, str(r.spec.staleness), str(r.spec.seed),
                         f"{s['steps_done']}" + (f"/{s['steps_total']}" if s["steps_total"] else ""),
                         _f(_stats([s["final_reward"]])), _collapse_cell([col]), str(s["nonfinite_steps"]),
                         f"`{os.path.relpath(r.spec.path, out)}`"])
    lines += _table(["algorithm", "N", "seed", "steps", "final reward", "collapse", "non-finite steps", "run"],
                    run_rows) + [""]
    lines += ["Numbers: `summary.json` (same directory)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _pyplot():
    if not os.environ.get("MPLCONFIGDIR"):  # a writable cache dir, kept between runs (font cache)
        cache = Path(tempfile.gettempdir()) / f"vespo-mpl-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        cache.mkdir(mode=0o700, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(cache)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _aligned(members: Sequence[Loaded], key_choices: tuple[str, ...], window: int):
    """steps, raw mean, smoothed mean / min / max over seeds (NaN where a seed has no value)."""
    series = []
    for m in members:
        key = _series_key(m.rows, key_choices)
        if key is None:
            continue
        steps = np.array([int(r["step"]) for r in m.rows])
        raw = np.array([_num(r.get(key)) for r in m.rows])
        series.append((steps, raw, moving_average(raw, window)))
    if not series:
        return None
    all_steps = np.unique(np.concatenate([s[0] for s in series]))
    raw_m = np.full((len(series), len(all_steps)), np.nan)
    sm_m = np.full_like(raw_m, np.nan)
    for j, (steps, raw, sm) in enumerate(series):
        pos = np.searchsorted(all_steps, steps)
        raw_m[j, pos] = np.where(np.isfinite(raw), raw, np.nan)
        sm_m[j, pos] = sm
    with warnings.catch_warnings():  # all-NaN columns (a step only some seeds have) are fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return (all_steps, np.nanmean(raw_m, 0), np.nanmean(sm_m, 0), np.nanmin(sm_m, 0), np.nanmax(sm_m, 0),
                len(series))


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_all(runs: Sequence[Loaded], groups: dict, out: Path, window: int) -> list[dict]:
    """Write one PNG per figure with data; returns [{"file", "title"}] in order."""
    if not any(r.rows for r in runs) and not any(r.evals for r in runs):
        return []
    plt = _pyplot()
    labels = list(dict.fromkeys(r.spec.label for r in runs))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colors = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    ns = sorted({r.spec.staleness for r in runs})
    images = []
    for fname, title, panels in FIGURES:
        panels = [(name, keys) for name, keys in panels
                  if any(_series_key(r.rows, keys) for r in runs)]
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), len(ns), figsize=(5.2 * len(ns), 2.8 * len(panels) + 0.6),
                                 squeeze=False, layout="constrained", sharex="col")
        for col, n in enumerate(ns):
            for row, (name, keys) in enumerate(panels):
                ax = axes[row][col]
                for (label, gn), members in groups.items():
                    if gn != n:
                        continue
                    a = _aligned(members, keys, window)
                    if a is None:
                        continue
                    steps, raw, mean, lo, hi, k = a
                    color = colors[label]
                    ax.plot(steps, raw, color=color, alpha=0.2, linewidth=0.8)
                    ax.plot(steps, mean, color=color, linewidth=1.6, label=label + (f" ({k} seeds)" if k > 1 else ""))
                    if k > 1:
                        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
                    if fname == "reward.png" and row == 0:
                        for m in members:
                            col_ = m.summary["collapse"]
                            if col_["status"] == "collapsed":
                                ax.axvline(col_["step"], color=color, linestyle=":", alpha=0.7)
                if name == "grad norm":
                    _maybe_log(ax)
                _flat_ylim(ax)
                ax.set_ylabel(name)
                ax.ticklabel_format(axis="y", useOffset=False)
                ax.grid(alpha=0.3)
                if row == 0 and len(ns) > 1:
                    ax.set_title(f"N = {n}")
                if row == len(panels) - 1:
                    ax.set_xlabel("optimizer step")
                if row == 0 and ax.get_legend_handles_labels()[0]:  # each column: its own algorithms
                    ax.legend(fontsize="small")
        fig.suptitle(f"{title} (moving average over {window} steps; faint: raw)", fontsize="medium")
        _save(fig, out / fname)
        plt.close(fig)
        images.append({"file": fname, "title": title})
    if any(r.evals for r in runs):
        images.append(_plot_eval(plt, runs, groups, ns, colors, out))
    return images


def _flat_ylim(ax) -> None:
    """A (numerically) constant curve: a readable ±5% axis instead of rounding noise."""
    lo, hi = ax.get_ylim()
    mid = (lo + hi) / 2
    if ax.get_yscale() == "linear" and hi - lo < 1e-6 * max(abs(mid), 1e-6):
        pad = 0.05 * abs(mid) if mid else 0.05
        ax.set_ylim(mid - pad, mid + pad)


def _maybe_log(ax) -> None:
    ys = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()] or [np.array([])])
    ys = ys[np.isfinite(ys)]
    if ys.size and ys.min() > 0 and ys.max() / ys.min() > 100:
        ax.set_yscale("log")


def _plot_eval(plt, runs, groups, ns, colors, out: Path) -> dict:
    benches = sorted({str(e["benchmark"]) for r in runs for e in r.evals})
    fig, axes = plt.subplots(len(benches), len(ns), figsize=(5.2 * len(ns), 2.8 * len(benches) + 0.6),
                             squeeze=False, layout="constrained")
    for col, n in enumerate(ns):
        for row, b in enumerate(benches):
            ax = axes[row][col]
            for (label, gn), members in groups.items():
                if gn != n:
                    continue
                by_step: dict[float, list[tuple[float, float, float]]] = {}
                for m in members:
                    for e in m.evals:
                        if str(e["benchmark"]) == b and math.isfinite(_num(e.get("avg_at_k"))):
                            v = _num(e["avg_at_k"])
                            lo, hi = _num(e.get("ci95_low")), _num(e.get("ci95_high"))
                            by_step.setdefault(_num(e.get("step")), []).append(
                                (v, lo if math.isfinite(lo) else v, hi if math.isfinite(hi) else v))
                if not by_step:
                    continue
                xs = sorted(by_step)
                mean = np.array([np.mean([t[0] for t in by_step[x]]) for x in xs])
                lo = np.array([np.mean([t[1] for t in by_step[x]]) for x in xs])
                hi = np.array([np.mean([t[2] for t in by_step[x]]) for x in xs])
                ax.errorbar(xs, mean, yerr=[np.maximum(mean - lo, 0), np.maximum(hi - mean, 0)], color=colors[label],
                            marker="o", capsize=3, label=label)
            ks = sorted({e.get("k") for r in runs for e in r.evals if str(e["benchmark"]) == b and e.get("k")})
            ax.set_ylabel(f"{b} avg@{'/'.join(map(str, ks)) or 'k'}")
            ax.grid(alpha=0.3)
            if row == 0 and len(ns) > 1:
                ax.set_title(f"N = {n}")
            if row == len(benches) - 1:
                ax.set_xlabel("optimizer step")
            if row == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
    fig.suptitle("Eval accuracy (mean over seeds; bars: 95% interval)", fontsize="medium")
    _save(fig, out / "eval.png")
    plt.close(fig)
    return {"file": "eval.png", "title": "Eval accuracy"}


if __name__ == "__main__":  # `python -m vespo_cli.compare CONFIG RUN_DIR REPLAY RESUME` (see `train`)
    import sys as _sys

    try:
        _train_child(*_sys.argv[1:5])
    except UserError as e:
        print(f"error: {e}", file=_sys.stderr)
        _sys.exit(2)
