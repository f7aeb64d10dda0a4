"""Typed config: `extends:` chains, algorithm presets, `--set` overrides, one-line UserErrors, ranges, saving."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vespo_cli import config as C
from vespo_cli import objectives as O
from vespo_cli import presets as presets_module
from vespo_cli.config import Config, load_config, load_run_config, save_config
from vespo_cli.errors import UserError
from vespo_cli.schema import bounds, numeric_fields


def given(cfg: Config) -> dict:
    """The objective params a config set explicitly (the rest are the objective's defaults)."""
    p = cfg.algorithm.params
    return {k: p[k] for k in p.model_fields_set if k != "objective"}


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """An empty presets dir (with algorithms/) installed as vespo's PRESETS_DIR; returns a writer."""
    root = tmp_path / "presets"
    (root / "algorithms").mkdir(parents=True)
    monkeypatch.setattr(presets_module, "PRESETS_DIR", root)

    def write(rel: str, text: str) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    write.root = root
    return write


def user_error(fn, *args, **kwargs) -> str:
    """Call fn, expect a UserError, check it is one line, return its message."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert info.value.exit_code == 2
    return msg


# --------------------------------------------------------------------------- extends


def test_extends_multi_level_by_name_and_relative_path(presets):
    presets(
        "base.yaml",
        """
        description: the base
        trainer: {lr: 1.0e-3, steps: 9, weight_decay: 0.5}
        rollout: {n: 2, temperature: 0.7}
    """,
    )
    presets(
        "mid.yaml",
        """
        extends: base
        rollout: {n: 3}
        trainer: {steps: 5}
    """,
    )
    leaf = presets(
        "sub/leaf.yaml",
        """
        extends: ../mid.yaml
        description: the leaf
        trainer: {lr: 2.0e-3}
    """,
    )
    cfg = load_config(str(leaf))
    assert cfg.description == "the leaf"
    assert cfg.trainer.lr == 2e-3  # leaf
    assert cfg.trainer.steps == 5  # mid
    assert cfg.trainer.weight_decay == 0.5  # base, kept through two deep merges
    assert cfg.rollout.n == 3 and cfg.rollout.temperature == 0.7
    assert cfg.rollout.top_p == 1.0  # dataclass default
    assert cfg.preset == "leaf"
    assert load_config("mid").preset == "mid"  # by name from PRESETS_DIR


def test_error_names_the_layer_that_set_the_value(presets):
    presets("base.yaml", "rollout: {temperature: hot}\n")
    presets("child.yaml", "extends: base\ntrainer: {lr: 1.0e-3}\n")
    msg = user_error(load_config, "child")
    assert msg == f"{presets.root / 'base.yaml'}: rollout.temperature: expected a float in (0, 10], got 'hot'"


def test_extends_cycle_is_detected(presets):
    presets("a.yaml", "extends: b\n")
    presets("b.yaml", "extends: c.yaml\n")
    presets("c.yaml", "extends: a\n")
    msg = user_error(load_config, "a")
    assert "extends: cycle" in msg and "a.yaml" in msg and "b.yaml" in msg and "c.yaml" in msg
    presets("self.yaml", "extends: self\n")
    assert "cycle" in user_error(load_config, "self")


def test_extends_missing_parent_names_the_child(presets):
    child = presets("child.yaml", "extends: nowhere\n")
    msg = user_error(load_config, "child")
    assert msg.startswith(f"{child}: extends: nowhere: unknown preset")
    presets("child2.yaml", "extends: 3\n")
    assert "extends: expected a preset name or path, got 3" in user_error(load_config, "child2")


def test_empty_preset_gives_defaults(presets):
    presets("empty.yaml", "# nothing\n")
    assert load_config("empty") == Config(preset="empty")


# --------------------------------------------------------------------------- algorithm presets


RUN = """
    algorithm:
      objective: vespo
      params: {c1_pos: 5.0, c2_neg: 1.0}
"""


def test_algorithm_preset_with_objective_replaces_params(presets):
    presets("run.yaml", RUN)
    presets("algorithms/grpo.yaml", "description: g\nobjective: grpo\nparams: {eps_high: 0.28}\n")
    presets("algorithms/grpo-bare.yaml", "objective: grpo\n")
    cfg = load_config("run", "grpo")
    assert cfg.algorithm.objective == "grpo"
    assert given(cfg) == {"eps_high": 0.28}  # no vespo params leak into grpo
    assert dict(cfg.algorithm.params) == {**O.OBJECTIVE_DEFAULTS["grpo"], "eps_high": 0.28}
    assert cfg.algorithm.description == "g" and cfg.algorithm.name == "grpo"
    assert given(load_config("run", "grpo-bare")) == {}


def test_algorithm_preset_same_objective_still_replaces_run_params(presets):
    presets("run.yaml", RUN)
    presets("algorithms/vespo.yaml", "objective: vespo\nparams: {c1_pos: 2.0}\n")
    assert given(load_config("run", "vespo")) == {"c1_pos": 2.0}


def test_algorithm_preset_without_objective_tunes_the_run(presets):
    presets("run.yaml", RUN)
    presets("algorithms/tis.yaml", "correction: tis\ncorrection_cap: 3\n")
    cfg = load_config("run", "tis")
    assert cfg.algorithm.objective == "vespo"
    assert given(cfg) == {"c1_pos": 5.0, "c2_neg": 1.0}
    assert cfg.algorithm.correction == "tis" and cfg.algorithm.correction_cap == 3.0


def test_algorithm_preset_extends_merges_params_of_same_objective(presets):
    presets("run.yaml", RUN)
    presets("algorithms/vespo.yaml", "objective: vespo\nparams: {c1_pos: 2.0, c2_pos: 3.0}\n")
    presets("algorithms/vespo-neg.yaml", "extends: vespo\nparams: {c2_pos: 9.0}\n")
    presets("algorithms/to-grpo.yaml", "extends: vespo\nobjective: grpo\n")
    cfg = load_config("run", "vespo-neg")
    assert given(cfg) == {"c1_pos": 2.0, "c2_pos": 9.0}
    assert given(load_config("run", "to-grpo")) == {}  # objective changed: params reset
    cfg = load_config("run", "vespo-neg", ["algorithm.params.c1_neg=4", "algorithm.objective=vespo"])
    assert given(cfg) == {"c1_pos": 2.0, "c2_pos": 9.0, "c1_neg": 4.0}


def test_algorithm_preset_by_path_and_unknown(presets, tmp_path):
    presets("run.yaml", RUN)
    p = tmp_path / "mine.yaml"
    p.write_text("objective: gspo\nparams: {eps_low: 1e-4}\n")
    cfg = load_config("run", str(p))
    assert (cfg.algorithm.objective, given(cfg), cfg.algorithm.name) == ("gspo", {"eps_low": 1e-4}, "mine")
    presets("algorithms/grpo.yaml", "objective: grpo\n")
    msg = user_error(load_config, "run", "nope")
    assert msg == "nope: unknown algorithm preset (known: grpo)"


def test_unknown_objective_and_param(presets):
    presets("algorithms/bad.yaml", "objective: ppo2\n")
    msg = user_error(load_config, None, "bad")
    assert msg.startswith(f"{presets.root / 'algorithms' / 'bad.yaml'}: algorithm.objective: unknown objective 'ppo2'")
    run = presets("run.yaml", "algorithm: {objective: grpo, params: {eps_low: 0.1, c1_pos: 2}}\n")
    msg = user_error(load_config, "run")
    assert msg == f"{run}: algorithm.params.c1_pos: unknown parameter of grpo (known: dual_clip, eps_high, eps_low)"


# --------------------------------------------------------------------------- --set


def test_set_overrides_types():
    cfg = load_config(
        None,
        None,
        [
            "trainer.lr=1e-6",  # YAML 1.1 reads this as a string
            "trainer.weight_decay=3",  # int where a float is expected is fine
            "trainer.betas=[0.8, 0.95]",
            "trainer.steps=7",
            "data.shuffle=false",
            "model.trust_remote_code=true",
            "rollout.engine=hf",
            "algorithm.correction=tis",
            "eval.k=4",
            "eval.k=null",
            "eval.limit=5",
            "eval.benchmarks=[aime24, math500]",
            "data.train=gsm8k",
            "data.template={problem}",  # a string, not the YAML mapping {problem: null}
            "description=",
            "algorithm.params={c1_pos: 1.5}",
        ],
    )
    assert cfg.trainer.lr == 1e-6 and isinstance(cfg.trainer.lr, float)
    assert cfg.trainer.weight_decay == 3.0 and isinstance(cfg.trainer.weight_decay, float)
    assert cfg.trainer.betas == [0.8, 0.95]
    assert cfg.trainer.steps == 7
    assert cfg.data.shuffle is False and cfg.model.trust_remote_code is True
    assert cfg.rollout.engine == "hf" and cfg.algorithm.correction == "tis"
    assert cfg.eval.k is None and cfg.eval.limit == 5
    assert cfg.eval.benchmarks == ["aime24", "math500"]
    assert cfg.data.train == "gsm8k" and cfg.data.template == "{problem}"
    assert cfg.description == ""
    assert given(cfg) == {"c1_pos": 1.5}
    assert load_config(None, None, ["algorithm.correction=null"]).algorithm.correction is None


def test_yaml11_floats_in_files(presets):
    presets("f.yaml", "trainer: {lr: 1e-6, grad_clip: 2, betas: [0.9, 1e-3]}\n")
    cfg = load_config("f")
    assert cfg.trainer.lr == 1e-6 and cfg.trainer.betas == [0.9, 1e-3] and cfg.trainer.grad_clip == 2.0


def test_set_is_applied_after_presets(presets):
    presets("p.yaml", "trainer: {lr: 1.0e-3}\n")
    assert load_config("p", None, ["trainer.lr=5e-4"]).trainer.lr == 5e-4


LR = "a float in (0, 1]"
STEPS = "an integer in [1, 1000000000]"


@pytest.mark.parametrize(
    "item, expected",
    [
        ("trainer.lr=fast", f"--set trainer.lr=fast: trainer.lr: expected {LR}, got 'fast'"),
        ("trainer.lr=true", f"--set trainer.lr=true: trainer.lr: expected {LR}, got True"),
        ("trainer.steps=1.5", f"--set trainer.steps=1.5: trainer.steps: expected {STEPS}, got 1.5"),
        ("trainer.steps=true", f"--set trainer.steps=true: trainer.steps: expected {STEPS}, got True"),
        ("trainer.steps=ten", f"--set trainer.steps=ten: trainer.steps: expected {STEPS}, got 'ten'"),
        ("data.shuffle=1", "--set data.shuffle=1: data.shuffle: expected true or false, got 1"),
        ("rollout.engine=tpu", "--set rollout.engine=tpu: rollout.engine: expected one of 'vllm', 'hf', got 'tpu'"),
        (
            "algorithm.correction=x",
            "--set algorithm.correction=x: algorithm.correction: expected one of 'tis', 'mis' (or null), got 'x'",
        ),
        (
            "trainer.betas=0.9",
            "--set trainer.betas=0.9: trainer.betas: expected a list of 2 items, each a float in [0, 1), got 0.9",
        ),
        (
            "trainer.betas=[0.9, x]",
            "--set trainer.betas=[0.9, x]: trainer.betas[1]: expected a float in [0, 1), got 'x'",
        ),
        ("eval.k=many", "--set eval.k=many: eval.k: expected an integer in [1, 65536] (or null), got 'many'"),
        ("trainer=3", "--set trainer=3: trainer: expected a mapping, got 3"),
        ("algorithm.params=3", "--set algorithm.params=3: algorithm.params: expected a mapping, got 3"),
    ],
)
def test_set_wrong_type(item, expected):
    assert user_error(load_config, None, None, [item]) == expected


def test_set_unknown_key_and_syntax():
    msg = user_error(load_config, None, None, ["trainer.foo=1"])
    assert msg.startswith("--set trainer.foo=1: trainer.foo: unknown key (expected one of: ")
    assert "lr" in msg and "staleness" in msg
    assert user_error(load_config, None, None, ["bogus=1"]).startswith("--set bogus=1: bogus: unknown key")
    assert (
        user_error(load_config, None, None, ["trainer.lr"])
        == "--set trainer.lr: expected KEY=VALUE, e.g. trainer.lr=1e-6"
    )
    assert (
        user_error(load_config, None, None, ["trainer..lr=1"])
        == "--set trainer..lr=1: expected a dotted key like trainer.lr"
    )
    assert user_error(load_config, None, None, ["=1"]).startswith("--set =1: expected a dotted key")


def test_parse_override():
    assert C.parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert C.parse_override("a.b=null") == ("a.b", None)
    assert C.parse_override("a.b=x=y") == ("a.b", "x=y")
    assert C.parse_override("a.b=") == ("a.b", "")
    assert C.parse_override("a.b=[unclosed") == ("a.b", "[unclosed")  # not YAML: kept as text


# --------------------------------------------------------------------------- file errors


def test_exact_message_format_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "x.yaml").write_text("trainer:\n  lr: fast\n")
    assert user_error(load_config, "presets/x.yaml") == f"presets/x.yaml: trainer.lr: expected {LR}, got 'fast'"


@pytest.mark.parametrize(
    "text, tail",
    [
        ("trainer: {foo: 1}\n", "trainer.foo: unknown key (expected one of: "),
        ("trainr: {lr: 1.0e-3}\n", "trainr: unknown key (expected one of: algorithm, data, description, eval, "),
        ("trainer: {steps: 2.5}\n", f"trainer.steps: expected {STEPS}, got 2.5"),
        ("trainer: {steps: '3'}\n", f"trainer.steps: expected {STEPS}, got '3'"),
        ("trainer: {bf16_autocast: 'yes'}\n", "trainer.bf16_autocast: expected true or false, got 'yes'"),
        ("model: {dtype: float64}\n", "model.dtype: expected one of 'float32', 'bfloat16', got 'float64'"),
        ("model: {path: 5}\n", "model.path: expected a string, got 5"),
        ("eval:\n", "eval: expected a mapping, got None"),
        ("trainer: 5\n", "trainer: expected a mapping, got 5"),
        ("eval: {benchmarks: aime24}\n", "eval.benchmarks: expected a list, got 'aime24'"),
        ("algorithm: {params: [1]}\n", "algorithm.params: expected a mapping, got [1]"),
        (
            "algorithm: {params: {eps_low: 0.1}}\n",
            "algorithm.params.eps_low: unknown parameter of vespo (known: c1_neg, ",
        ),
        ("algorithm: {objective: 3}\n", "algorithm.objective: expected a string, got 3"),
        ("trainer: {lr: .inf}\n", f"trainer.lr: expected {LR}, got inf"),
        ("trainer: {seed: 1e40}\n", "trainer.seed: expected an integer in [0, 2147483647], got 1e+40"),
    ],
)
def test_file_type_errors(presets, text, tail):
    p = presets("x.yaml", text)
    assert user_error(load_config, str(p)).startswith(f"{p}: {tail}")


def test_missing_file_and_unknown_preset(presets, tmp_path):
    presets("one.yaml", "")
    assert user_error(load_config, str(tmp_path / "no.yaml")) == f"{tmp_path / 'no.yaml'}: preset file not found"
    assert user_error(load_config, "nope") == "nope: unknown preset (known: one)"


def test_invalid_yaml(presets):
    p = presets("bad.yaml", "trainer:\n  lr: [1, 2\n  steps: 3\n")
    msg = user_error(load_config, "bad")
    assert msg.startswith(f"{p}: line ") and "invalid YAML" in msg


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("3\n", "int")])
def test_top_level_not_a_mapping(presets, text, kind):
    p = presets("top.yaml", text)
    assert user_error(load_config, "top") == f"{p}: expected a mapping at the top level, got {kind}"


# --------------------------------------------------------------------------- value checks


@pytest.mark.parametrize(
    "item, expected",
    [
        ("trainer.steps=0", f"expected {STEPS}, got 0"),
        ("trainer.minibatch_prompts=0", "expected an integer in [1, 1048576], got 0"),
        ("trainer.staleness=-1", "expected an integer in [1, 4096], got -1"),
        ("trainer.micro_token_budget=0", "expected an integer in [1, 16777216], got 0"),
        ("trainer.save_every=0", f"expected {STEPS}, got 0"),
        ("trainer.async_workers=-1", "expected an integer in [0, 1024], got -1"),
        ("trainer.rollout_batch_prompts=0", "expected an integer in [1, 4294967296] (or null), got 0"),
        ("trainer.rollout_batch_prompts=-4", "expected an integer in [1, 4294967296] (or null), got -4"),
        ("trainer.max_staleness=-1", "expected an integer in [0, 1000000000], got -1"),
        ("trainer.lr_warmup_steps=-1", "expected an integer in [0, 1000000000], got -1"),
        ("trainer.threads=-2", "expected an integer in [0, 65536], got -2"),
        ("trainer.weight_decay=-0.1", "expected a float in [0, 10], got -0.1"),
        ("trainer.lr=0", f"expected {LR}, got 0"),
        ("trainer.lr=-1e-6", f"expected {LR}, got -1e-06"),
        ("trainer.lr=.nan", f"expected {LR}, got nan"),
        ("trainer.lr=nan", f"expected {LR}, got 'nan'"),  # YAML's NaN is .nan: 'nan' is a string
        ("trainer.grad_clip=.inf", "expected a float in (0, 1000000], got inf"),
        ("trainer.seed=-1", "expected an integer in [0, 2147483647], got -1"),
        ("trainer.seed=4294967296", "expected an integer in [0, 2147483647], got 4294967296"),
        ("trainer.max_nonfinite_steps=0", f"expected {STEPS}, got 0"),
        ("trainer.betas=[0.9]", "expected a list of 2 items, each a float in [0, 1), got [0.9]"),
        ("rollout.n=0", "expected an integer in [1, 1024], got 0"),
        ("rollout.max_tokens=-5", "expected an integer in [1, 1048576], got -5"),
        ("rollout.tensor_parallel_size=0", "expected an integer in [1, 1024], got 0"),
        ("rollout.reward_workers=0", "expected an integer in [1, 1024], got 0"),
        ("rollout.temperature=0", "expected a float in (0, 10], got 0"),
        ("rollout.top_p=0", "expected a float in (0, 1], got 0"),
        ("rollout.top_p=1.5", "expected a float in (0, 1], got 1.5"),
        ("rollout.top_k=-2", "expected an integer in [-1, 1048576], got -2"),
        ("rollout.kv_cache_gib=0", "expected a float in (0, 65536], got 0"),
        ("rollout.gpu_memory_utilization=1.2", "expected a float in (0, 1], got 1.2"),
        ("rollout.reward_timeout_s=0", "expected a float in (0, 86400], got 0"),
        ("data.max_prompt_tokens=0", "expected an integer in [1, 1048576], got 0"),
        ("data.difficulty=9", "expected an integer in [1, 5] or a non-empty list of them, got 9"),
        (
            "algorithm.aggregation=mean",
            "expected one of 'token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum' (or null), got 'mean'",
        ),
        ("data.difficulty=[1,7]", "expected an integer in [1, 5] or a non-empty list of them, got [1, 7]"),
        ("eval.k=0", "expected an integer in [1, 65536] (or null), got 0"),
        ("eval.limit=0", "expected an integer in [1, 1000000000] (or null), got 0"),
        ("eval.max_tokens=0", "expected an integer in [1, 1048576], got 0"),
        ("eval.every=-1", "expected an integer in [0, 1000000000], got -1"),
        ("eval.top_p=2", "expected a float in (0, 1], got 2"),
        ("algorithm.correction_cap=1", "expected a float in (1, 1000000], got 1"),
        ("algorithm.params.c1_pos=-1", "expected a float in [0, 100], got -1"),
        ("algorithm.params.length_norm=log", "expected one of 'none', 'sqrt', 'linear', got 'log'"),
        ("layout.nodes=0", "expected an integer in [1, 65536], got 0"),
        ("layout.fsdp_size=0", "expected an integer in [1, 16777216], got 0"),
        ("layout.gpus_per_node=-1", "expected an integer in [0, 1024], got -1"),
    ],
)
def test_bad_values(item, expected):
    key = item.split("=")[0]
    assert user_error(load_config, None, None, [item]) == f"--set {item}: {key}: {expected}"


def test_list_item_out_of_range_names_the_item():
    assert (
        user_error(load_config, None, None, ["trainer.betas=[0.9, 1.0]"])
        == "--set trainer.betas=[0.9, 1.0]: trainer.betas[1]: expected a float in [0, 1), got 1.0"
    )


def test_one_dtype_policy_at_a_time():
    items = ["trainer.bf16_autocast=true", "trainer.bf16_params=true"]
    assert user_error(load_config, None, None, items) == (
        "--set trainer.bf16_params=true: trainer.bf16_params: true together with trainer.bf16_autocast: true; "
        "pick one dtype policy (set the other to false; train/precision.py)"
    )


def test_template_must_contain_problem(presets):
    p = presets("t.yaml", "data: {template: 'Solve: {question}'}\n")
    assert user_error(load_config, "t") == f"{p}: data.template: expected a template containing {{problem}}"
    msg = user_error(load_config, None, None, ["data.template=no placeholder"])
    assert msg == "--set data.template=no placeholder: data.template: expected a template containing {problem}"


def test_staleness_from_gbs():
    cfg = load_config(None, None, ["trainer.minibatch_prompts=4", "trainer.rollout_batch_prompts=12"])
    assert cfg.trainer.staleness == 3 and cfg.rollout_batch_prompts == 12
    assert cfg.trainer.rollout_batch_prompts == 12
    cfg = load_config(None, None, ["trainer.minibatch_prompts=4", "trainer.staleness=2"])
    assert cfg.trainer.rollout_batch_prompts == 8 and cfg.rollout_batch_prompts == 8


def test_gbs_not_divisible():
    msg = user_error(load_config, None, None, ["trainer.minibatch_prompts=4", "trainer.rollout_batch_prompts=6"])
    assert msg.startswith(
        "--set trainer.rollout_batch_prompts=6: trainer.rollout_batch_prompts: "
        "6 is not divisible by trainer.minibatch_prompts=4"
    )


def test_contradictory_staleness_in_one_source(presets):
    p = presets("s.yaml", "trainer: {minibatch_prompts: 4, staleness: 3, rollout_batch_prompts: 8}\n")
    msg = user_error(load_config, "s")
    assert msg == f"{p}: trainer.staleness: 3 contradicts rollout_batch_prompts/minibatch_prompts = 8/4"
    msg = user_error(
        load_config,
        None,
        None,
        ["trainer.staleness=3", "trainer.rollout_batch_prompts=8", "trainer.minibatch_prompts=4"],
    )
    assert msg.startswith("--set trainer.staleness=3: trainer.staleness: 3 contradicts")
    # consistent values in one place are fine
    presets("ok.yaml", "trainer: {minibatch_prompts: 4, staleness: 2, rollout_batch_prompts: 8}\n")
    assert load_config("ok").trainer.staleness == 2


def test_later_layer_wins_between_staleness_and_gbs(presets):
    presets("n.yaml", "trainer: {minibatch_prompts: 2, staleness: 2}\n")
    presets("g.yaml", "trainer: {minibatch_prompts: 2, rollout_batch_prompts: 8}\n")
    cfg = load_config("n", None, ["trainer.rollout_batch_prompts=12"])
    assert (cfg.trainer.staleness, cfg.rollout_batch_prompts) == (6, 12)
    cfg = load_config("g", None, ["trainer.staleness=2"])
    assert (cfg.trainer.staleness, cfg.rollout_batch_prompts) == (2, 4)
    presets("g2.yaml", "extends: n\ntrainer: {rollout_batch_prompts: 4}\n")
    assert load_config("g2").trainer.staleness == 2 * 4 // 4


# --------------------------------------------------------------------------- saving


def test_save_and_load_round_trip(presets, tmp_path):
    presets(
        "run.yaml",
        """
        description: "round trip: colons, 'quotes' and unicode \u00e9"
        model: {path: tiny, moe: true}
        data: {template: "Q: {problem}\\n\\nA: \\\\boxed{{}}", difficulty: 3}
        algorithm: {objective: vespo, params: {c1_pos: 2.5, length_norm: none}, correction: mis}
        trainer: {lr: 3e-6, minibatch_prompts: 2, rollout_batch_prompts: 6, betas: [0.9, 0.95]}
        eval: {benchmarks: [aime24], k: 4}
    """,
    )
    cfg = load_config("run", None, ["eval.limit=3"])
    path = save_config(cfg, tmp_path / "runs" / "r1")
    assert path == tmp_path / "runs" / "r1" / "config.yaml"
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left
    loaded = load_run_config(path.parent)
    assert loaded == cfg
    assert loaded.trainer.staleness == 3 and loaded.algorithm.params == O.VespoParams(c1_pos=2.5)
    again = load_run_config(path.parent, ["trainer.steps=99", "trainer.staleness=2"])
    assert again.trainer.steps == 99 and again.trainer.staleness == 2 and again.rollout_batch_prompts == 4
    msg = user_error(load_run_config, path.parent, ["trainer.lr=fast"])
    assert msg == f"--set trainer.lr=fast: trainer.lr: expected {LR}, got 'fast'"


def test_load_run_config_errors(tmp_path):
    assert user_error(load_run_config, tmp_path) == f"{tmp_path}: not a vespo run directory (no config.yaml)"
    (tmp_path / "config.yaml").write_text("trainer: {lr: fast}\n")
    assert user_error(load_run_config, tmp_path) == f"{tmp_path / 'config.yaml'}: trainer.lr: expected {LR}, got 'fast'"


# --------------------------------------------------------------------------- shipped presets


def test_shipped_presets_resolve(tmp_path):
    names = C.list_presets()
    assert {"tiny", "smollm2-arith", "base"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.preset == name
        assert C.preset_description(C.preset_path(name)), name
        save_config(cfg, tmp_path / name)
        assert load_run_config(tmp_path / name) == cfg, name
    for algo in C.list_presets("algorithms"):
        cfg = load_config("tiny", algo)
        assert C.preset_description(C.preset_path(algo, "algorithms")), algo
        save_config(cfg, tmp_path / f"tiny-{algo}")
        assert load_run_config(tmp_path / f"tiny-{algo}") == cfg, algo


def test_shipped_tiny_is_small():
    tiny = load_config("tiny")
    assert tiny.model.path == "tiny" and tiny.rollout.engine == "hf"
    assert tiny.rollout_batch_prompts == tiny.trainer.minibatch_prompts * tiny.trainer.staleness


def test_preset_description_of_invalid_preset(presets):
    p = presets("broken.yaml", "extends: missing\n")
    assert C.preset_description(p).startswith("(invalid: ")


# --------------------------------------------------------------------------- ranges, by construction


def numeric_keys() -> list[tuple[str, type, list, list[str]]]:
    """(dotted key, int/float, constraints, overrides selecting it) of every number in the config,
    every objective's params included: a key added to a model is covered here without listing it."""
    keys = [(key, tp, meta, []) for key, tp, meta in numeric_fields(Config)]
    for name, model in O.PARAMS.items():
        keys += [
            (key, tp, meta, [f"algorithm.objective={name}"])
            for key, tp, meta in numeric_fields(model, "algorithm.params.")
        ]
    return keys


NUMERIC = numeric_keys()
LISTS = {"trainer.betas"}  # numbers inside a list: the bad value goes in as the first item


def test_numeric_keys_found():
    names = {key for key, *_ in NUMERIC}
    assert {
        "trainer.lr",
        "trainer.seed",
        "trainer.betas",
        "rollout.top_p",
        "eval.k",
        "layout.nodes",
        "algorithm.correction_cap",
        "algorithm.params.c1_pos",
        "algorithm.params.dual_clip",
    } <= names
    assert LISTS <= names


@pytest.mark.parametrize("key, tp, meta", [(k, t, m) for k, t, m, _ in NUMERIC], ids=[k for k, *_ in NUMERIC])
def test_every_number_has_a_finite_range(key, tp, meta):
    lo, _, hi, _ = bounds(meta)
    assert lo is not None and hi is not None, f"{key}: declare both bounds (Field(ge=..., le=...))"
    assert -1e300 < lo < hi < 1e300


def bad_values(tp, meta) -> list[str]:
    """YAML texts outside the range: NaN, ±inf, below the lower bound, above the upper, and absurd sizes."""
    lo, lo_in, hi, hi_in = bounds(meta)
    below = (lo - 1 if lo_in else lo) if tp is int else (lo - abs(lo) - 1 if lo_in else lo)
    above = hi + 1 if tp is int else (hi * 2 + 1 if hi_in else hi)
    huge = ["1000000000000000000000000000000", "1e300"]
    return [".nan", ".inf", "-.inf", str(below), str(above), *huge, "-" + huge[0]]


CASES = [(key, value, pre) for key, tp, meta, pre in NUMERIC for value in bad_values(tp, meta)]


@pytest.mark.parametrize("key, value, pre", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_every_number_rejects_nan_inf_and_out_of_range(key, value, pre):
    item = f"{key}=[{value}, 0.5]" if key in LISTS else f"{key}={value}"
    msg = user_error(load_config, "tiny", None, [*pre, item])
    assert msg.startswith(f"--set {item}: {key}") and ": expected " in msg, msg


def test_yaml_floats_are_yaml12():
    assert C.parse_override("a=1e-6") == ("a", 1e-6) and C.parse_override("a=-2E+3") == ("a", -2e3)
    assert C.parse_override("a=1.5e-3") == ("a", 1.5e-3) and C.parse_override("a=1e") == ("a", "1e")
    assert C.parse_override("a=12") == ("a", 12)


def test_quoted_numbers_are_strings(presets):
    p = presets("q.yaml", "trainer: {lr: '1e-6'}\n")
    assert user_error(load_config, "q") == f"{p}: trainer.lr: expected {LR}, got '1e-6'"


# --------------------------------------------------------------------------- objective params


@pytest.mark.parametrize("name", sorted(O.OBJECTIVES))
def test_params_model_per_objective(name):
    cfg = load_config("tiny", None, [f"algorithm.objective={name}"])
    assert type(cfg.algorithm.params) is O.PARAMS[name] and cfg.algorithm.params.objective == name
    assert dict(cfg.algorithm.params) == O.OBJECTIVE_DEFAULTS[name]
    saved = C.to_dict(cfg)["algorithm"]["params"]
    assert saved == O.OBJECTIVE_DEFAULTS[name]  # the tag is the objective, not written twice


def test_params_follow_the_objective_on_load(tmp_path):
    cfg = load_config("tiny", "dapo")
    assert isinstance(cfg.algorithm.params, O.GrpoParams) and cfg.algorithm.params.dual_clip is None
    save_config(cfg, tmp_path)
    assert load_run_config(tmp_path).algorithm.params == cfg.algorithm.params
    msg = user_error(load_config, "tiny", "dapo", ["algorithm.objective=sapo"])  # grpo's params, sapo's model
    assert msg.startswith(
        f"{C.preset_path('dapo', 'algorithms')}: algorithm.params.eps_low: unknown parameter of "
        "sapo (known: tau_neg, tau_pos)"
    )


def test_params_model_is_the_objectives_keyword_arguments():
    import torch

    algo = load_config("tiny", "grpo", ["algorithm.correction=tis", "algorithm.correction_cap=3"]).algorithm
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(3, 5, generator=g, dtype=torch.float64), -torch.rand(3, 5, generator=g, dtype=torch.float64)
    mask, adv = torch.ones(3, 5, dtype=torch.bool), torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    by_model = O.policy_loss(
        algo.params, logp, old, adv, mask, rollout_logp=old - 0.5, correction="tis", correction_cap=algo.correction_cap
    )
    by_name = O.policy_loss(
        "grpo", logp, old, adv, mask, rollout_logp=old - 0.5, correction="tis", correction_cap=3.0, **algo.params
    )
    assert by_model[1] == by_name[1] and torch.equal(by_model[0], by_name[0])
    with pytest.raises(TypeError):
        O.policy_loss(algo.params, logp, old, adv, mask, eps_low=0.1)


def test_algorithm_section_built_in_code():
    algo = C.AlgorithmConfig(objective="reinforce")
    assert isinstance(algo.params, O.ReinforceParams) and dict(algo.params) == {}
    algo = C.AlgorithmConfig(objective="grpo", params=O.GrpoParams(eps_high=0.3))
    assert algo.params["eps_high"] == 0.3 and {**algo.params}["eps_low"] == 0.2
    with pytest.raises(UserError, match="algorithm.params: parameters of grpo, but algorithm.objective is vespo"):
        C.from_dict(C.Config, {"algorithm": {"objective": "vespo", "params": O.GrpoParams()}})


def test_correction_cap_has_one_default_and_range():
    assert C.AlgorithmConfig().correction_cap == O.CORRECTION_CAP
    assert O.resolve_params("reinforce")["correction_cap"] == O.CORRECTION_CAP
    assert (
        user_error(O.resolve_params, "reinforce", {"correction_cap": 1.0})
        == "correction_cap: expected a float in (1, 1000000], got 1.0"
    )


# --------------------------------------------------------------------------- algorithm name, run directory


def test_algorithm_name_names_the_run_dir(tmp_path):
    from vespo_cli.cli import _default_run_dir

    dapo, grpo = load_config("tiny", "dapo"), load_config("tiny", "grpo")
    assert dapo.algorithm.objective == grpo.algorithm.objective == "grpo"
    assert (dapo.algorithm.name, grpo.algorithm.name) == ("dapo", "grpo")
    assert _default_run_dir(dapo, None) == Path("runs/tiny-dapo")
    assert _default_run_dir(grpo, None) == Path("runs/tiny-grpo")
    assert _default_run_dir(load_config("tiny"), None) == Path("runs/tiny-vespo")  # the preset's own: objective
    assert _default_run_dir(load_config("tiny", "dapo", ["algorithm.name=mine"]), None) == Path("runs/tiny-mine")
    save_config(dapo, tmp_path)
    assert load_run_config(tmp_path).algorithm.name == "dapo"  # kept with the run


def test_dry_run_shows_the_algorithm_run_dir():
    from typer.testing import CliRunner

    from vespo_cli.cli import app

    for algo in ("dapo", "grpo"):
        result = CliRunner().invoke(app, ["train", "-p", "tiny", "-a", algo, "--dry-run"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"--algo {algo}" in result.output and f"runs/tiny-{algo}" in result.output


# --------------------------------------------------------------------------- names


def test_unknown_benchmark_fails_at_load(presets, tmp_path):
    msg = user_error(load_config, None, None, ["eval.benchmarks=[aime24, aime2]"])
    assert msg.startswith("--set eval.benchmarks=[aime24, aime2]: eval.benchmarks: unknown data source 'aime2'")
    assert user_error(load_config, None, None, [f"eval.benchmarks=[{tmp_path}/no.jsonl]"]).endswith("file not found")
    (tmp_path / "mine.jsonl").write_text("")
    cfg = load_config(None, None, [f"eval.benchmarks=[MATH-500, {tmp_path}/mine.jsonl, owner/set:test]"])
    assert len(cfg.eval.benchmarks) == 3


def test_engine_names_come_from_the_registry():
    from vespo_cli.rollout import ENGINES

    assert C.RolloutConfig.model_fields["engine"].annotation.__args__ == ENGINES
