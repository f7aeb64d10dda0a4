"""Typed run configuration: YAML presets with `extends:` inheritance and `--set a.b=c` overrides.

A preset is a YAML file under `presets/` (or any path). Loading resolves the `extends:` chain and
merges the algorithm preset (`presets/algorithms/<name>.yaml`) into `algorithm` (`presets.py`), applies
`--set` overrides, and validates the result with the pydantic models below (one per section; ranges
are field constraints, `schema.Section`). Every unknown key, wrong type or bad value is a `UserError`
naming where it came from, e.g. `presets/x.yaml: trainer.lr: expected a float in (0, 1], got 'fast'`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .catalog import check_source
from .engines import ENGINES
from .errors import UserError
from .objective_params import CORRECTION_CAP, PARAMS, AnyObjectiveParams, CorrectionCap, VespoParams
from .presets import list_presets as list_presets  # `as`: re-exported (callers import these from config)
from .presets import merge, nest, parse_override, read_yaml, resolve
from .presets import preset_description as preset_description
from .presets import preset_path as preset_path
from .prompts import PAPER_TEMPLATE
from .rundir import RunDir
from .schema import Section, fail, locate, user_error

MAX_TOKENS = 2**20  # prompt and response lengths
MAX_COUNT = 10**9  # steps and step intervals
SEED_MAX = 2**31 - 1  # engines and numpy take 32-bit seeds
STALENESS_MAX = 2**12


class ModelConfig(Section):
    path: str = "smollm2-135m"  # `smollm2-135m` | `tiny` | local HF checkpoint dir | hub id
    dtype: Literal["float32", "bfloat16"] = "float32"  # trainer's master weights
    trust_remote_code: bool = False
    moe: bool = False  # Mixture-of-Experts: enables routing capture for replay (R2)


class DataConfig(Section):
    train: str = "arith"  # data source name (see `vespo_cli.data`, `catalog.py`) or a .jsonl/.parquet path
    template: str = PAPER_TEMPLATE  # user message; `{problem}` is replaced
    # procedural arithmetic only: a level 1..5, or a list of levels (a mixture: arith.py)
    difficulty: int | list[int] = 1
    max_prompt_tokens: int = Field(1024, ge=1, le=MAX_TOKENS)
    shuffle: bool = True

    @field_validator("difficulty")
    @classmethod
    def _levels(cls, v: int | list[int]) -> int | list[int]:
        levels = [v] if isinstance(v, int) else v
        if not levels or any(not 1 <= d <= 5 for d in levels):
            raise fail(f"expected an integer in [1, 5] or a non-empty list of them, got {v!r}")
        return v

    @field_validator("template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        if "{problem}" not in v:
            raise fail("expected a template containing {problem}")
        return v


class RolloutConfig(Section):
    engine: Literal[ENGINES] = "vllm"  # engines.ENGINES
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    n: int = Field(8, ge=1, le=1024)  # samples per prompt (group size)
    temperature: float = Field(1.0, gt=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1, le=MAX_TOKENS)  # -1 = off
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    kv_cache_gib: float = Field(0.5, gt=0, le=2**16)  # vLLM CPU backend KV cache
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)  # vLLM CUDA
    tensor_parallel_size: int = Field(1, ge=1, le=1024)
    reward_workers: int = Field(2, ge=1, le=1024)
    reward_timeout_s: float = Field(5.0, gt=0, le=86400)
    answer_fallback: Literal["none", "final_number"] = "none"  # rewards/extract.py: the opt-in last rule


class AlgorithmConfig(Section):
    description: str = ""
    name: str = ""  # the algorithm preset (`--algo NAME`); names the default run directory
    objective: str = "vespo"  # a name in objective_params.PARAMS (= objectives.OBJECTIVES)
    params: AnyObjectiveParams = Field(default_factory=VespoParams)  # the objective's params model
    correction: Literal["tis", "mis"] | None = None
    correction_cap: CorrectionCap = CORRECTION_CAP  # C of TIS/MIS
    routing_replay: bool = False
    # verl's loss_agg_mode names; None: the objective's registered aggregation (objectives.AGGREGATION)
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _tag_params(cls, data: Any) -> Any:
        """The params are those of `objective`: it is the union's tag."""
        if isinstance(data, dict) and isinstance(data.get("params", {}), dict):
            data = {**data, "params": {**data.get("params", {}), "objective": data.get("objective", "vespo")}}
        return data

    @field_validator("objective")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PARAMS:
            raise fail(f"unknown objective {v!r} (known: {', '.join(sorted(PARAMS))})")
        return v

    @model_validator(mode="after")
    def _params_match(self) -> AlgorithmConfig:
        if self.params.objective != self.objective:
            raise fail(f"parameters of {self.params.objective}, but algorithm.objective is {self.objective}", "params")
        return self


class WandbConfig(Section):
    """Where a W&B run goes (trainer.loggers: [wandb]); its id is run.json's `run_id`, unique per run."""

    project: str = "vespo"
    entity: str | None = None  # W&B team or user; None = the logged-in default
    group: str | None = None  # e.g. one sweep's runs


class TrainerConfig(Section):
    steps: int = Field(20, ge=1, le=MAX_COUNT)  # optimizer steps in total
    minibatch_prompts: int = Field(4, ge=1, le=2**20)  # mbs: prompts per optimizer step
    staleness: int = Field(1, ge=1, le=STALENESS_MAX)  # N = gbs / mbs optimizer steps per rollout batch; 1 = on-policy
    rollout_batch_prompts: int | None = Field(None, ge=1, le=2**32)  # gbs; default mbs * N (if given, N = gbs / mbs)
    lr: float = Field(1e-6, gt=0, le=1)
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2
    )
    weight_decay: float = Field(0.01, ge=0, le=10)
    grad_clip: float = Field(1.0, gt=0, le=1e6)
    lr_warmup_steps: int = Field(0, ge=0, le=MAX_COUNT)
    micro_token_budget: int = Field(8192, ge=1, le=2**24)  # tokens per microbatch (gradient accumulation is exact)
    bf16_autocast: bool = False  # bf16 matmuls under torch autocast, fp32 elsewhere (train/precision.py)
    bf16_params: bool = False  # a bf16 copy of the fp32 weights per step, fp32 gradients (train/precision.py)
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile of each decoder block (train/compile.py; docs/performance.md)
    save_every: int = Field(10, ge=1, le=MAX_COUNT)  # optimizer steps between checkpoints (and at the end)
    keep_checkpoints: int = Field(2, ge=0, le=10**6)  # 0 = keep all
    max_staleness: int = Field(4, ge=0, le=MAX_COUNT)  # async: drop shards more than this many policy versions old
    async_workers: int = Field(1, ge=0, le=1024)  # 0: the trainer starts none (external `vespo rollout --follow`)
    max_nonfinite_steps: int = Field(3, ge=1, le=MAX_COUNT)  # stop after this many skipped steps in a row
    seed: int = Field(0, ge=0, le=SEED_MAX)
    threads: int = Field(0, ge=0, le=2**16)  # torch intra-op threads; 0 = all cores
    old_logp: Literal["recompute", "rollout"] = "recompute"  # proximal policy: trainer recompute or engine's
    loggers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)  # besides metrics.jsonl
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _batch_sizes(self) -> TrainerConfig:
        """N from gbs / mbs when gbs is given (both given: they must agree); gbs = mbs · N after."""
        mbs, gbs = self.minibatch_prompts, self.rollout_batch_prompts
        if gbs is not None:
            if gbs % mbs:
                raise fail(
                    f"{gbs} is not divisible by trainer.minibatch_prompts={mbs} (staleness N = gbs/mbs)",
                    "rollout_batch_prompts",
                )
            if "staleness" in self.model_fields_set and self.staleness != gbs // mbs:
                raise fail(
                    f"{self.staleness} contradicts rollout_batch_prompts/minibatch_prompts = {gbs}/{mbs}", "staleness"
                )
            if gbs // mbs > STALENESS_MAX:
                raise fail(
                    f"{gbs}/{mbs} = staleness {gbs // mbs}, expected at most {STALENESS_MAX}", "rollout_batch_prompts"
                )
            self.staleness = gbs // mbs
        self.rollout_batch_prompts = mbs * self.staleness
        if self.bf16_params and self.bf16_autocast:
            raise fail(
                "true together with trainer.bf16_autocast: true; pick one dtype policy "
                "(set the other to false; train/precision.py)",
                "bf16_params",
            )
        return self


class EvalConfig(Section):
    benchmarks: list[str] = Field(default_factory=list)  # names in data.EVAL_SETS, or any data source
    k: int | None = Field(None, ge=1, le=2**16)  # samples per problem; default = the paper's k per benchmark
    limit: int | None = Field(None, ge=1, le=MAX_COUNT)  # first N problems only
    every: int = Field(0, ge=0, le=MAX_COUNT)  # eval every N optimizer steps during training (0 = only at the end)
    temperature: float = Field(1.0, ge=0, le=10)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1, le=MAX_TOKENS)
    # the eval's own prompt budget (not data.max_prompt_tokens): longer benchmark prompts are skipped
    # and counted in the summary (`skipped_prompts`), checked before an engine loads
    max_prompt_tokens: int = Field(2048, ge=1, le=MAX_TOKENS)

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:  # an unknown benchmark fails here, not after training
            problem = check_source(name)
            if problem:
                raise fail(problem)
        return v


class LayoutConfig(Section):
    """Hardware layout for paper-scale runs (checked by `vespo presets --check`)."""

    nodes: int = Field(1, ge=1, le=2**16)
    gpus_per_node: int = Field(0, ge=0, le=1024)  # 0 = CPU
    gpu_memory_gib: float = Field(80.0, gt=0, le=2**16)
    fsdp_size: int = Field(1, ge=1, le=2**24)
    rollout_gpus: int = Field(0, ge=0, le=2**24)  # GPUs given to vLLM (colocated when 0)


class Config(Section):
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    layout: LayoutConfig = Field(default_factory=LayoutConfig)
    preset: str = ""  # name of the preset this came from (informational)

    @property
    def rollout_batch_prompts(self) -> int:
        return self.trainer.minibatch_prompts * self.trainer.staleness


# --------------------------------------------------------------------------- loading


def load_config(
    preset: str | None = None,
    algo: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Resolve preset (+ extends chain) ← algorithm preset ← --set overrides into a Config."""
    merged, origin = resolve(preset, algo)
    return _finish(merged, origin, overrides)


def _finish(merged: dict, origin: dict[str, str], overrides) -> Config:
    """Apply `--set` overrides, then type and validate the merged mapping."""
    for item in overrides:
        key, value = parse_override(item)
        merge(merged, nest(key, value), origin, f"--set {item}")
    _later_batch_size_wins(merged, origin)
    _raw_strings(merged, origin)
    return from_dict(Config, merged, origin)


def load_run_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The resolved config a run was started with (`runs/<name>/config.yaml`), plus overrides."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise UserError(f"{run_dir}: not a vespo run directory (no config.yaml)")
    origin: dict[str, str] = {}
    merged: dict = {}
    merge(merged, read_yaml(path), origin, str(path))
    return _finish(merged, origin, overrides)


RESUME_SETTABLE = ("trainer.steps",)  # the --set a --resume takes: they change nothing consumed (inputs.py)


def load_resume_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A resumed run's config: its config.yaml, plus `--set trainer.steps=N` for N at least the recorded
    steps (extending a run changes no consumed input, and the lr schedule does not depend on the step
    count: train/step.py). Any other --set is refused: a run resumes with its own config.yaml."""
    for item in overrides:
        if parse_override(item)[0] not in RESUME_SETTABLE:
            raise UserError(
                f"--resume: --set {item} is refused; a run resumes with its own config.yaml (only "
                f"{', '.join(RESUME_SETTABLE)} may be raised; edit {RunDir(run_dir).config} to change a setting)"
            )
    recorded = load_run_config(run_dir)
    cfg = load_run_config(run_dir, overrides)
    if cfg.trainer.steps < recorded.trainer.steps:
        raise UserError(
            f"--resume: --set trainer.steps={cfg.trainer.steps}: expected at least the run's "
            f"{recorded.trainer.steps} (a resume extends a run, it does not cut it)"
        )
    return cfg


# --------------------------------------------------------------------------- typing


def _where(origin: dict[str, str], dotted: str) -> str:
    parts = re.sub(r"\[\d+\]", "", dotted).split(".")  # trainer.betas[1] was set with trainer.betas
    for i in range(len(parts), 0, -1):
        src = origin.get(".".join(parts[:i]))
        if src:
            return src
    return "config"


def _group(src: str | None) -> str | None:
    """The source of a value, all `--set` items counting as one: the command line."""
    return "--set" if src and src.startswith("--set ") else src


def _later_batch_size_wins(merged: dict, origin: dict[str, str]) -> None:
    """`trainer.staleness` (N) and `trainer.rollout_batch_prompts` (gbs = mbs · N) set in different
    places (a preset and its child, a run's config.yaml and --set): the one set last wins, the other
    is dropped and derived from it. Set in one place, both are kept and must agree (TrainerConfig)."""
    n_key, gbs_key = "trainer.staleness", "trainer.rollout_batch_prompts"
    trainer = merged.get("trainer")
    if not (isinstance(trainer, dict) and n_key in origin and gbs_key in origin):
        return
    if _group(origin[n_key]) == _group(origin[gbs_key]):
        return
    order = list(origin)
    later, earlier = (n_key, gbs_key) if order.index(n_key) > order.index(gbs_key) else (gbs_key, n_key)
    if trainer.get(later.split(".")[1]) is not None:
        trainer.pop(earlier.split(".")[1], None)


def _raw_strings(merged: dict, origin: dict[str, str]) -> None:
    """A string key set by `--set KEY=VALUE` takes VALUE as written: `--set data.template={problem}`
    is that text, not the YAML mapping {problem: null}."""
    for dotted, src in origin.items():
        if not src.startswith("--set ") or "=" not in src:
            continue
        key, raw = src[len("--set ") :].split("=", 1)
        if key.strip() != dotted or locate(Config, tuple(dotted.split("."))).tp is not str:
            continue
        *parents, last = dotted.split(".")
        node = merged
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last) is not None and not isinstance(node.get(last), str):
            node[last] = raw


def from_dict(cls: type[BaseModel], data: dict, origin: dict | None = None, prefix: str = "") -> Any:
    """Validate a mapping as `cls`; the first unknown key, wrong type or bad value is a one-line
    UserError naming the source that set it (`origin`: dotted key → file or `--set` item)."""
    origin = origin or {}
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise user_error(e, cls, lambda key: _where(origin, key), prefix) from None


# --------------------------------------------------------------------------- saving


def to_dict(cfg: BaseModel) -> dict:
    """The config (or a section) as plain data: what config.yaml holds."""
    return cfg.model_dump(mode="python")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Config, run_dir: str | os.PathLike) -> Path:
    from .fsio import atomic_write_text

    path = RunDir(run_dir).config
    atomic_write_text(path, dump_yaml(cfg))
    return path
