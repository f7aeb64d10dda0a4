"""Typed config: `extends:` chains, algorithm presets, `--set` overrides, one-line UserErrors, saving."""
from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest

from vespo_cli import config as C
from vespo_cli.config import Config, load_config, load_run_config, save_config
from vespo_cli.errors import UserError

# Params each fake objective knows (the real library is checked separately by test_shipped_presets).
FAKE_DEFAULTS = {
    "vespo": {"c1_pos": 2.0, "c2_pos": 3.0, "c1_neg": 3.0, "c2_neg": 2.0, "length_norm": "none"},
    "grpo": {"eps_low": 0.2, "eps_high": 0.2},
    "gspo": {"eps": 3e-4},
}


@pytest.fixture(autouse=True)
def fake_objectives(monkeypatch):
    """Isolate config tests from the objectives library (edited elsewhere): a stand-in module."""
    mod = types.ModuleType("vespo_cli.objectives")
    mod.OBJECTIVES = {name: object() for name in FAKE_DEFAULTS}
    mod.OBJECTIVE_DEFAULTS = FAKE_DEFAULTS
    monkeypatch.setitem(sys.modules, "vespo_cli.objectives", mod)
    return mod


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """An empty presets dir (with algorithms/) installed as vespo's PRESETS_DIR; returns a writer."""
    root = tmp_path / "presets"
    (root / "algorithms").mkdir(parents=True)
    monkeypatch.setattr(C, "PRESETS_DIR", root)

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
    presets("base.yaml", """
        description: the base
        trainer: {lr: 1.0e-3, steps: 9, weight_decay: 0.5}
        rollout: {n: 2, temperature: 0.7}
    """)
    presets("mid.yaml", """
        extends: base
        rollout: {n: 3}
        trainer: {steps: 5}
    """)
    leaf = presets("sub/leaf.yaml", """
        extends: ../mid.yaml
        description: the leaf
        trainer: {lr: 2.0e-3}
    """)
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
    assert msg == f"{presets.root / 'base.yaml'}: rollout.temperature: expected a float, got 'hot'"


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
    cfg = load_config("empty")
    default = Config()
    C.validate(default)
    default.preset = "empty"
    assert cfg == default


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
    assert cfg.algorithm.params == {"eps_high": 0.28}  # no vespo params leak into grpo
    assert cfg.algorithm.description == "g"
    assert load_config("run", "grpo-bare").algorithm.params == {}


def test_algorithm_preset_same_objective_still_replaces_run_params(presets):
    presets("run.yaml", RUN)
    presets("algorithms/vespo.yaml", "objective: vespo\nparams: {c1_pos: 2.0}\n")
    assert load_config("run", "vespo").algorithm.params == {"c1_pos": 2.0}


def test_algorithm_preset_without_objective_tunes_the_run(presets):
    presets("run.yaml", RUN)
    presets("algorithms/tis.yaml", "correction: tis\ncorrection_cap: 3\n")
    cfg = load_config("run", "tis")
    assert cfg.algorithm.objective == "vespo"
    assert cfg.algorithm.params == {"c1_pos": 5.0, "c2_neg": 1.0}
    assert cfg.algorithm.correction == "tis" and cfg.algorithm.correction_cap == 3.0


def test_algorithm_preset_extends_merges_params_of_same_objective(presets):
    presets("run.yaml", RUN)
    presets("algorithms/vespo.yaml", "objective: vespo\nparams: {c1_pos: 2.0, c2_pos: 3.0}\n")
    presets("algorithms/vespo-neg.yaml", "extends: vespo\nparams: {c2_pos: 9.0}\n")
    presets("algorithms/to-grpo.yaml", "extends: vespo\nobjective: grpo\n")
    cfg = load_config("run", "vespo-neg")
    assert cfg.algorithm.params == {"c1_pos": 2.0, "c2_pos": 9.0}
    assert load_config("run", "to-grpo").algorithm.params == {}  # objective changed: params reset
    cfg = load_config("run", "vespo-neg", ["algorithm.params.c1_neg=4", "algorithm.objective=vespo"])
    assert cfg.algorithm.params == {"c1_pos": 2.0, "c2_pos": 9.0, "c1_neg": 4}


def test_algorithm_preset_by_path_and_unknown(presets, tmp_path):
    presets("run.yaml", RUN)
    p = tmp_path / "mine.yaml"
    p.write_text("objective: gspo\nparams: {eps: 1.0e-4}\n")
    cfg = load_config("run", str(p))
    assert (cfg.algorithm.objective, cfg.algorithm.params) == ("gspo", {"eps": 1e-4})
    presets("algorithms/grpo.yaml", "objective: grpo\n")
    msg = user_error(load_config, "run", "nope")
    assert msg == "nope: unknown algorithm preset (known: grpo)"


def test_unknown_objective_and_param(presets):
    presets("algorithms/bad.yaml", "objective: ppo2\n")
    msg = user_error(load_config, None, "bad")
    assert msg.startswith(f"{presets.root / 'algorithms' / 'bad.yaml'}: algorithm.objective: unknown objective 'ppo2'")
    run = presets("run.yaml", "algorithm: {objective: grpo, params: {eps_low: 0.1, c1_pos: 2}}\n")
    msg = user_error(load_config, "run")
    assert msg == f"{run}: algorithm.params.c1_pos: unknown parameter of grpo (known: eps_high, eps_low)"


# --------------------------------------------------------------------------- --set


def test_set_overrides_types():
    cfg = load_config(None, None, [
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
    ])
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
    assert cfg.algorithm.params == {"c1_pos": 1.5}
    assert load_config(None, None, ["algorithm.correction=null"]).algorithm.correction is None


def test_yaml11_floats_in_files(presets):
    presets("f.yaml", "trainer: {lr: 1e-6, grad_clip: 2, betas: [0.9, 1e-3]}\n")
    cfg = load_config("f")
    assert cfg.trainer.lr == 1e-6 and cfg.trainer.betas == [0.9, 1e-3] and cfg.trainer.grad_clip == 2.0


def test_set_is_applied_after_presets(presets):
    presets("p.yaml", "trainer: {lr: 1.0e-3}\n")
    assert load_config("p", None, ["trainer.lr=5e-4"]).trainer.lr == 5e-4


@pytest.mark.parametrize("item, expected", [
    ("trainer.lr=fast", "--set trainer.lr=fast: trainer.lr: expected a float, got 'fast'"),
    ("trainer.lr=true", "--set trainer.lr=true: trainer.lr: expected a float, got True"),
    ("trainer.steps=1.5", "--set trainer.steps=1.5: trainer.steps: expected an integer, got 1.5"),
    ("trainer.steps=true", "--set trainer.steps=true: trainer.steps: expected an integer, got True"),
    ("trainer.steps=ten", "--set trainer.steps=ten: trainer.steps: expected an integer, got 'ten'"),
    ("data.shuffle=1", "--set data.shuffle=1: data.shuffle: expected true or false, got 1"),
    ("rollout.engine=tpu", "--set rollout.engine=tpu: rollout.engine: expected one of 'vllm', 'hf', got 'tpu'"),
    ("algorithm.correction=x", "--set algorithm.correction=x: algorithm.correction: "
                               "expected one of 'tis', 'mis' (or null), got 'x'"),
    ("trainer.betas=0.9", "--set trainer.betas=0.9: trainer.betas: expected a list, got 0.9"),
    ("trainer.betas=[0.9, x]", "--set trainer.betas=[0.9, x]: trainer.betas[1]: expected a float, got 'x'"),
    ("eval.k=many", "--set eval.k=many: eval.k: expected an integer (or null), got 'many'"),
    ("trainer=3", "--set trainer=3: trainer: expected a mapping, got 3"),
    ("algorithm.params=3", "--set algorithm.params=3: algorithm.params: expected a mapping, got 3"),
])
def test_set_wrong_type(item, expected):
    assert user_error(load_config, None, None, [item]) == expected


def test_set_unknown_key_and_syntax():
    msg = user_error(load_config, None, None, ["trainer.foo=1"])
    assert msg.startswith("--set trainer.foo=1: trainer.foo: unknown key (expected one of: ")
    assert "lr" in msg and "staleness" in msg
    assert user_error(load_config, None, None, ["bogus=1"]).startswith("--set bogus=1: bogus: unknown key")
    assert user_error(load_config, None, None, ["trainer.lr"]) == \
        "--set trainer.lr: expected KEY=VALUE, e.g. trainer.lr=1e-6"
    assert user_error(load_config, None, None, ["trainer..lr=1"]) == \
        "--set trainer..lr=1: expected a dotted key like trainer.lr"
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
    assert user_error(load_config, "presets/x.yaml") == "presets/x.yaml: trainer.lr: expected a float, got 'fast'"


@pytest.mark.parametrize("text, tail", [
    ("trainer: {foo: 1}\n", "trainer.foo: unknown key (expected one of: "),
    ("trainr: {lr: 1.0e-3}\n", "trainr: unknown key (expected one of: algorithm, data, description, eval, "),
    ("trainer: {steps: 2.5}\n", "trainer.steps: expected an integer, got 2.5"),
    ("trainer: {steps: '3'}\n", "trainer.steps: expected an integer, got '3'"),
    ("trainer: {bf16_autocast: 'yes'}\n", "trainer.bf16_autocast: expected true or false, got 'yes'"),
    ("model: {dtype: float64}\n", "model.dtype: expected one of 'float32', 'bfloat16', got 'float64'"),
    ("model: {path: 5}\n", "model.path: expected a string, got 5"),
    ("eval:\n", "eval: expected a mapping, got None"),
    ("trainer: 5\n", "trainer: expected a mapping, got 5"),
    ("eval: {benchmarks: aime24}\n", "eval.benchmarks: expected a list, got 'aime24'"),
    ("algorithm: {params: [1]}\n", "algorithm.params: expected a mapping, got [1]"),
])
def test_file_type_errors(presets, text, tail):
    p = presets("x.yaml", text)
    assert user_error(load_config, str(p)) .startswith(f"{p}: {tail}")


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


@pytest.mark.parametrize("item, expected", [
    ("trainer.steps=0", "expected a positive integer, got 0"),
    ("trainer.minibatch_prompts=0", "expected a positive integer, got 0"),
    ("trainer.staleness=-1", "expected a positive integer, got -1"),
    ("trainer.micro_token_budget=0", "expected a positive integer, got 0"),
    ("trainer.save_every=0", "expected a positive integer, got 0"),
    ("trainer.async_workers=0", "expected a positive integer, got 0"),
    ("trainer.rollout_batch_prompts=0", "expected a positive integer, got 0"),
    ("trainer.rollout_batch_prompts=-4", "expected a positive integer, got -4"),
    ("trainer.max_staleness=-1", "expected a non-negative integer, got -1"),
    ("trainer.lr_warmup_steps=-1", "expected a non-negative integer, got -1"),
    ("trainer.threads=-2", "expected a non-negative integer, got -2"),
    ("trainer.weight_decay=-0.1", "expected a non-negative float, got -0.1"),
    ("trainer.lr=0", "expected a positive float, got 0.0"),
    ("trainer.lr=-1e-6", "expected a positive float, got -1e-06"),
    ("trainer.lr=nan", "expected a positive float, got nan"),
    ("trainer.betas=[0.9]", "expected two floats in [0, 1), got [0.9]"),
    ("trainer.betas=[0.9, 1.0]", "expected two floats in [0, 1), got [0.9, 1.0]"),
    ("rollout.n=0", "expected a positive integer, got 0"),
    ("rollout.max_tokens=-5", "expected a positive integer, got -5"),
    ("rollout.tensor_parallel_size=0", "expected a positive integer, got 0"),
    ("rollout.reward_workers=0", "expected a positive integer, got 0"),
    ("rollout.temperature=0", "expected a positive float, got 0.0"),
    ("rollout.top_p=0", "expected a float in (0, 1], got 0.0"),
    ("rollout.top_p=1.5", "expected a float in (0, 1], got 1.5"),
    ("rollout.kv_cache_gib=0", "expected a positive float, got 0.0"),
    ("rollout.gpu_memory_utilization=1.2", "expected a float in (0, 1], got 1.2"),
    ("rollout.reward_timeout_s=0", "expected a positive float, got 0.0"),
    ("data.max_prompt_tokens=0", "expected a positive integer, got 0"),
    ("data.difficulty=9", "expected an integer in 1..5, got 9"),
    ("eval.k=0", "expected a positive integer, got 0"),
    ("eval.limit=0", "expected a positive integer, got 0"),
    ("eval.max_tokens=0", "expected a positive integer, got 0"),
    ("eval.every=-1", "expected a non-negative integer, got -1"),
    ("eval.top_p=2", "expected a float in (0, 1], got 2.0"),
    ("algorithm.correction_cap=1", "expected a float > 1, got 1.0"),
    ("layout.nodes=0", "expected a positive integer, got 0"),
    ("layout.fsdp_size=0", "expected a positive integer, got 0"),
    ("layout.gpus_per_node=-1", "expected a non-negative integer, got -1"),
])
def test_bad_values(item, expected):
    key = item.split("=")[0]
    assert user_error(load_config, None, None, [item]) == f"--set {item}: {key}: {expected}"


def test_one_dtype_policy_at_a_time():
    items = ["trainer.bf16_autocast=true", "trainer.bf16_params=true"]
    assert user_error(load_config, None, None, items) == (
        "--set trainer.bf16_params=true: trainer.bf16_params: true together with trainer.bf16_autocast: true; "
        "pick one dtype policy (set the other to false; train/precision.py)")


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
    assert msg.startswith("--set trainer.rollout_batch_prompts=6: trainer.rollout_batch_prompts: "
                          "6 is not divisible by trainer.minibatch_prompts=4")


def test_contradictory_staleness_in_one_source(presets):
    p = presets("s.yaml", "trainer: {minibatch_prompts: 4, staleness: 3, rollout_batch_prompts: 8}\n")
    msg = user_error(load_config, "s")
    assert msg == f"{p}: trainer.staleness: 3 contradicts rollout_batch_prompts/minibatch_prompts = 8/4"
    msg = user_error(load_config, None, None, ["trainer.staleness=3", "trainer.rollout_batch_prompts=8",
                                               "trainer.minibatch_prompts=4"])
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
    presets("run.yaml", """
        description: "round trip: colons, 'quotes' and unicode \u00e9"
        model: {path: tiny, moe: true}
        data: {template: "Q: {problem}\\n\\nA: \\\\boxed{{}}", difficulty: 3}
        algorithm: {objective: vespo, params: {c1_pos: 2.5, length_norm: none}, correction: mis}
        trainer: {lr: 3e-6, minibatch_prompts: 2, rollout_batch_prompts: 6, betas: [0.9, 0.95]}
        eval: {benchmarks: [aime24], k: 4}
    """)
    cfg = load_config("run", None, ["eval.limit=3"])
    path = save_config(cfg, tmp_path / "runs" / "r1")
    assert path == tmp_path / "runs" / "r1" / "config.yaml"
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left
    loaded = load_run_config(path.parent)
    assert loaded == cfg
    assert loaded.trainer.staleness == 3 and loaded.algorithm.params == {"c1_pos": 2.5, "length_norm": "none"}
    again = load_run_config(path.parent, ["trainer.steps=99", "trainer.staleness=2"])
    assert again.trainer.steps == 99 and again.trainer.staleness == 2 and again.rollout_batch_prompts == 4
    msg = user_error(load_run_config, path.parent, ["trainer.lr=fast"])
    assert msg == "--set trainer.lr=fast: trainer.lr: expected a float, got 'fast'"


def test_load_run_config_errors(tmp_path):
    assert user_error(load_run_config, tmp_path) == f"{tmp_path}: not a vespo run directory (no config.yaml)"
    (tmp_path / "config.yaml").write_text("trainer: {lr: fast}\n")
    assert user_error(load_run_config, tmp_path) == \
        f"{tmp_path / 'config.yaml'}: trainer.lr: expected a float, got 'fast'"


# --------------------------------------------------------------------------- shipped presets


def test_shipped_presets_resolve(monkeypatch, tmp_path):
    # the real objectives library (if present) validates objective names and params here
    monkeypatch.delitem(sys.modules, "vespo_cli.objectives", raising=False)
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
