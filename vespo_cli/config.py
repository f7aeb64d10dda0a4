"""Typed run configuration: YAML presets with `extends:` inheritance and `--set a.b=c` overrides.

A preset is a YAML file under `presets/` (or any path). Loading resolves the `extends:` chain,
merges the algorithm preset (`presets/algorithms/<name>.yaml`) into `algorithm`, applies `--set`
overrides, and converts the result into the dataclasses below. Every unknown key, wrong type or
bad value is a `UserError` naming where it came from, e.g.
`presets/x.yaml: trainer.lr: expected a float, got 'fast'`.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .data import PAPER_TEMPLATE
from .errors import UserError

PRESETS_DIR = Path(os.environ.get("VESPO_PRESETS", Path(__file__).resolve().parent.parent / "presets"))


@dataclass
class ModelConfig:
    path: str = "smollm2-135m"  # `smollm2-135m` | `tiny` | local HF checkpoint dir | hub id
    dtype: Literal["float32", "bfloat16"] = "float32"  # trainer's master weights
    trust_remote_code: bool = False
    moe: bool = False  # Mixture-of-Experts: enables routing capture for replay (R2)


@dataclass
class DataConfig:
    train: str = "arith"  # data source name (see `vespo_cli.data`) or a .jsonl/.parquet path
    template: str = PAPER_TEMPLATE  # user message; `{problem}` is replaced
    difficulty: int = 1  # procedural arithmetic only
    max_prompt_tokens: int = 1024
    shuffle: bool = True


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "hf"] = "vllm"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    n: int = 8  # samples per prompt (group size)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    kv_cache_gib: float = 0.5  # vLLM CPU backend KV cache
    gpu_memory_utilization: float = 0.5  # vLLM CUDA
    tensor_parallel_size: int = 1
    reward_workers: int = 2
    reward_timeout_s: float = 5.0
    answer_fallback: Literal["none", "final_number"] = "none"  # rewards/extract.py: the opt-in last rule


@dataclass
class AlgorithmConfig:
    description: str = ""
    objective: str = "vespo"
    params: dict[str, Any] = field(default_factory=dict)
    correction: Optional[Literal["tis", "mis"]] = None
    correction_cap: float = 2.0
    routing_replay: bool = False


@dataclass
class TrainerConfig:
    steps: int = 20  # optimizer steps in total
    minibatch_prompts: int = 4  # mbs: prompts per optimizer step
    staleness: int = 1  # N = gbs / mbs optimizer steps per rollout batch; 1 = on-policy
    rollout_batch_prompts: Optional[int] = None  # gbs; default mbs * N (if given, N = gbs / mbs)
    lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    lr_warmup_steps: int = 0
    micro_token_budget: int = 8192  # tokens per microbatch (gradient accumulation is exact)
    bf16_autocast: bool = False  # bf16 matmuls under torch autocast, fp32 elsewhere (train/precision.py)
    bf16_params: bool = False  # a bf16 copy of the fp32 weights per step, fp32 gradients (train/precision.py)
    gradient_checkpointing: bool = False
    save_every: int = 10  # optimizer steps between checkpoints (and at the end)
    keep_checkpoints: int = 2
    max_staleness: int = 4  # async: drop shards more than this many policy versions old
    async_workers: int = 1
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = all cores
    old_logp: Literal["recompute", "rollout"] = "recompute"  # proximal policy: trainer recompute or engine's
    loggers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)  # besides metrics.jsonl


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=list)
    k: Optional[int] = None  # samples per problem; default = the paper's k per benchmark
    limit: Optional[int] = None  # first N problems only
    every: int = 0  # eval every N optimizer steps during training (0 = only at the end if benchmarks)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024


@dataclass
class LayoutConfig:
    """Hardware layout for paper-scale runs (checked by `vespo presets --check`)."""

    nodes: int = 1
    gpus_per_node: int = 0  # 0 = CPU
    gpu_memory_gib: float = 80.0
    fsdp_size: int = 1
    rollout_gpus: int = 0  # GPUs given to vLLM (colocated when 0)


@dataclass
class Config:
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    preset: str = ""  # name of the preset this came from (informational)

    @property
    def rollout_batch_prompts(self) -> int:
        return self.trainer.minibatch_prompts * self.trainer.staleness


# --------------------------------------------------------------------------- loading


def preset_path(name_or_path: str, kind: str = "") -> Path:
    """`tiny` → presets/tiny.yaml; `vespo` with kind="algorithms" → presets/algorithms/vespo.yaml."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise UserError(f"{name_or_path}: preset file not found")
        return p
    p = PRESETS_DIR / kind / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(list_presets(kind)) or "none"
        what = "algorithm preset" if kind else "preset"
        raise UserError(f"{name_or_path}: unknown {what} (known: {known})")
    return p


def list_presets(kind: str = "") -> list[str]:
    return sorted(p.stem for p in (PRESETS_DIR / kind).glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _layers(path: Path, kind: str = "", seen: tuple = ()) -> list[tuple[str, dict]]:
    """The `extends:` chain of a preset file, base first, as (source, mapping) layers."""
    if path.resolve() in seen:
        chain = " -> ".join(str(s) for s in seen + (path.resolve(),))
        raise UserError(f"{path}: extends: cycle ({chain})")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    layers: list[tuple[str, dict]] = []
    if parent is not None:
        if not isinstance(parent, str):
            raise UserError(f"{path}: extends: expected a preset name or path, got {parent!r}")
        rel = path.parent / parent
        try:
            parent_path = rel if rel.is_file() else preset_path(parent, kind)
        except UserError as e:
            raise UserError(f"{path}: extends: {e}") from None
        layers = _layers(parent_path, kind, seen + (path.resolve(),))
    return layers + [(str(path), data)]


def _set_origin(origin: dict, dotted: str, source: str) -> None:
    origin.pop(dotted, None)  # insertion order = the order values were last set (see validate)
    origin[dotted] = source


def _merge(dst: dict, src: dict, origin: dict, source: str, prefix: str = "") -> None:
    """Deep-merge `src` into `dst`, recording the source of every leaf (and section) in `origin`.

    `params` mappings merge one level (key by key) and their values are replaced whole."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key == "params":
            base = dst.get(key) if isinstance(dst.get(key), dict) else {}
            dst[key] = {**base, **value}
            _set_origin(origin, dotted, source)
            for sub in value:
                _set_origin(origin, f"{dotted}.{sub}", source)
        elif isinstance(value, dict):
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
            _set_origin(origin, dotted, source)
            _merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = value
            _set_origin(origin, dotted, source)


def parse_override(item: str) -> tuple[str, Any]:
    """`trainer.lr=3e-6` → ("trainer.lr", 3e-6); the value is YAML (so `[1, 2]`, `null`, `true` work)."""
    if "=" not in item:
        raise UserError(f"--set {item}: expected KEY=VALUE, e.g. trainer.lr=1e-6")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item}: expected a dotted key like trainer.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    cur = out
    parts = key.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def load_config(
    preset: str | None = None,
    algo: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Resolve preset (+ extends chain) ← algorithm preset ← --set overrides into a Config."""
    merged: dict = {}
    origin: dict[str, str] = {}
    if preset:
        for source, layer in _layers(preset_path(preset)):
            _merge(merged, layer, origin, source)
        merged.setdefault("preset", Path(preset).stem if Path(preset).suffix in (".yaml", ".yml") else Path(preset).name)
    if algo:
        algo_layers = _layers(preset_path(algo, "algorithms"), "algorithms")
        objective_set = False
        for source, layer in algo_layers:
            # an algorithm preset that names its objective replaces the params wholesale (never mixes
            # two objectives); a layer that only tunes params (e.g. one extending another algorithm
            # preset with the same objective) merges them key by key.
            if "objective" in layer:
                if not isinstance(merged.get("algorithm"), dict):
                    merged["algorithm"] = {}
                if not objective_set or layer["objective"] != merged["algorithm"].get("objective"):
                    merged["algorithm"]["params"] = {}
                objective_set = True
            _merge(merged, {"algorithm": layer}, origin, source)
    return _finish(merged, origin, overrides)


def _finish(merged: dict, origin: dict[str, str], overrides) -> Config:
    """Apply `--set` overrides, then type and validate the merged mapping."""
    for item in overrides:
        key, value = parse_override(item)
        _merge(merged, _nest(key, value), origin, f"--set {item}")
    cfg = from_dict(Config, merged, origin)
    validate(cfg, origin)
    return cfg


def load_run_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The resolved config a run was started with (`runs/<name>/config.yaml`), plus overrides."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a vespo run directory (no config.yaml)")
    origin: dict[str, str] = {}
    merged: dict = {}
    _merge(merged, _read_yaml(path), origin, str(path))
    return _finish(merged, origin, overrides)


# --------------------------------------------------------------------------- typing


def _where(origin: dict[str, str], dotted: str) -> str:
    parts = re.sub(r"\[\d+\]", "", dotted).split(".")  # trainer.betas[1] was set with trainer.betas
    for i in range(len(parts), 0, -1):
        src = origin.get(".".join(parts[:i]))
        if src:
            return src
    return "config"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    return {int: "an integer", float: "a float", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, dotted: str, origin: dict) -> Any:
    def bad() -> UserError:
        return UserError(f"{_where(origin, dotted)}: {dotted}: expected {_type_name(tp)}, got {value!r}")

    org = typing.get_origin(tp)
    if org in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, dotted, origin)
            except UserError:
                continue
        raise bad()
    if org is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad()
    if org is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, v, f"{dotted}[{i}]", origin) for i, v in enumerate(value)]
    if org is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return from_dict(tp, value, origin, dotted + ".")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` as a string
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raw = _raw_override(origin, dotted)  # `--set data.template={problem}` is a string, not YAML
        if raw is not None and value is not None:
            return raw
        raise bad()
    return value


def _raw_override(origin: dict, dotted: str) -> str | None:
    """The unparsed VALUE of the `--set KEY=VALUE` that set `dotted`, if that is where it came from."""
    src = origin.get(dotted, "")
    if src.startswith("--set ") and "=" in src:
        key, raw = src[len("--set "):].split("=", 1)
        if key.strip() == dotted:
            return raw
    return None


def from_dict(cls: type, data: dict, origin: dict | None = None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    origin = origin or {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise UserError(
                f"{_where(origin, dotted)}: {dotted}: unknown key (expected one of: {', '.join(sorted(names))})"
            )
        kwargs[key] = _coerce(hints[key], value, dotted, origin)
    return cls(**kwargs)


def validate(cfg: Config, origin: dict[str, str] | None = None) -> None:
    """Value checks the types cannot express: positive sizes, divisibility, known objective."""
    origin = origin or {}

    def fail(dotted: str, msg: str) -> None:
        raise UserError(f"{_where(origin, dotted)}: {dotted}: {msg}")

    t = cfg.trainer
    for name in ("steps", "minibatch_prompts", "staleness", "micro_token_budget", "save_every",
                 "async_workers"):
        if getattr(t, name) < 1:
            fail(f"trainer.{name}", f"expected a positive integer, got {getattr(t, name)}")
    n_key, gbs_key = "trainer.staleness", "trainer.rollout_batch_prompts"

    def group(src: str | None) -> str | None:  # all --set items are one source: the command line
        return "--set" if src and src.startswith("--set ") else src

    order = list(origin)
    same_source = n_key in origin and group(origin.get(n_key)) == group(origin.get(gbs_key))
    staleness_later = n_key in origin and gbs_key in origin and order.index(n_key) > order.index(gbs_key)
    if t.rollout_batch_prompts is not None and not (staleness_later and not same_source):
        # gbs given (and not overridden by a later staleness): N = gbs / mbs
        gbs = t.rollout_batch_prompts
        if gbs < 1:
            fail(gbs_key, f"expected a positive integer, got {gbs}")
        if gbs % t.minibatch_prompts:
            fail(gbs_key,
                 f"{gbs} is not divisible by trainer.minibatch_prompts={t.minibatch_prompts} (staleness N = gbs/mbs)")
        if n_key in origin and t.staleness != gbs // t.minibatch_prompts and same_source:
            fail(n_key, f"{t.staleness} contradicts rollout_batch_prompts/minibatch_prompts = "
                 f"{gbs}/{t.minibatch_prompts}")
        t.staleness = gbs // t.minibatch_prompts
    t.rollout_batch_prompts = t.minibatch_prompts * t.staleness
    if not t.lr > 0:
        fail("trainer.lr", f"expected a positive float, got {t.lr}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        fail("trainer.betas", f"expected two floats in [0, 1), got {t.betas}")
    for name in ("max_staleness", "lr_warmup_steps", "threads"):
        if getattr(t, name) < 0:
            fail(f"trainer.{name}", f"expected a non-negative integer, got {getattr(t, name)}")
    if t.weight_decay < 0:
        fail("trainer.weight_decay", f"expected a non-negative float, got {t.weight_decay}")
    if t.bf16_params and t.bf16_autocast:
        fail("trainer.bf16_params", "true together with trainer.bf16_autocast: true; pick one dtype policy "
             "(set the other to false; train/precision.py)")
    r = cfg.rollout
    for name in ("n", "max_tokens", "tensor_parallel_size", "reward_workers"):
        if getattr(r, name) < 1:
            fail(f"rollout.{name}", f"expected a positive integer, got {getattr(r, name)}")
    if not r.temperature > 0:
        fail("rollout.temperature", f"expected a positive float, got {r.temperature}")
    if not 0 < r.top_p <= 1:
        fail("rollout.top_p", f"expected a float in (0, 1], got {r.top_p}")
    if not r.kv_cache_gib > 0:
        fail("rollout.kv_cache_gib", f"expected a positive float, got {r.kv_cache_gib}")
    if not 0 < r.gpu_memory_utilization <= 1:
        fail("rollout.gpu_memory_utilization", f"expected a float in (0, 1], got {r.gpu_memory_utilization}")
    if not r.reward_timeout_s > 0:
        fail("rollout.reward_timeout_s", f"expected a positive float, got {r.reward_timeout_s}")
    e = cfg.eval
    for name in ("k", "limit", "max_tokens"):
        if getattr(e, name) is not None and getattr(e, name) < 1:
            fail(f"eval.{name}", f"expected a positive integer, got {getattr(e, name)}")
    if e.every < 0:
        fail("eval.every", f"expected a non-negative integer, got {e.every}")
    if not 0 < e.top_p <= 1:
        fail("eval.top_p", f"expected a float in (0, 1], got {e.top_p}")
    lay = cfg.layout
    for name in ("nodes", "fsdp_size"):
        if getattr(lay, name) < 1:
            fail(f"layout.{name}", f"expected a positive integer, got {getattr(lay, name)}")
    for name in ("gpus_per_node", "rollout_gpus"):
        if getattr(lay, name) < 0:
            fail(f"layout.{name}", f"expected a non-negative integer, got {getattr(lay, name)}")
    if cfg.data.max_prompt_tokens < 1:
        fail("data.max_prompt_tokens", f"expected a positive integer, got {cfg.data.max_prompt_tokens}")
    if "{problem}" not in cfg.data.template:
        fail("data.template", "expected a template containing {problem}")
    if not 1 <= cfg.data.difficulty <= 5:
        fail("data.difficulty", f"expected an integer in 1..5, got {cfg.data.difficulty}")
    if cfg.algorithm.correction_cap <= 1:
        fail("algorithm.correction_cap", f"expected a float > 1, got {cfg.algorithm.correction_cap}")
    _validate_objective(cfg.algorithm, fail)


def _validate_objective(algo: AlgorithmConfig, fail) -> None:
    try:
        from .objectives import OBJECTIVES, OBJECTIVE_DEFAULTS
    except ImportError:  # objectives library not importable: checked again when training starts
        return
    if algo.objective not in OBJECTIVES:
        fail("algorithm.objective", f"unknown objective {algo.objective!r} (known: {', '.join(sorted(OBJECTIVES))})")
    known = OBJECTIVE_DEFAULTS.get(algo.objective, {})
    for key in algo.params:
        if key not in known:
            fail(f"algorithm.params.{key}",
                 f"unknown parameter of {algo.objective} (known: {', '.join(sorted(known)) or 'none'})")


# --------------------------------------------------------------------------- saving


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Config, run_dir: str | os.PathLike) -> Path:
    from .fsio import atomic_write_text

    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, dump_yaml(cfg))
    return path


def preset_description(path: Path) -> str:
    """The `description:` of a preset, following `extends:` if it has none of its own."""
    try:
        for _, layer in reversed(_layers(path, "algorithms" if path.parent.name == "algorithms" else "")):
            if layer.get("description"):
                return str(layer["description"])
    except UserError as e:
        return f"(invalid: {e})"
    return ""
