"""`vespo bench`: FLOP accounting, the RSS sampler, the policy_loss probe, step parts, the regression
check, the figure, and a smoke run of the whole suite (--quick). No timed assertions."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from vespo_cli import bench


def test_train_flops_closed_form():
    shape = {"decoder_params": 100, "head_params": 10, "layers": 2, "attn_width": 4}
    # 6·100·(3+5) + 6·10·(1+2) + 12·2·4·(3² + 5²); the causal count halves the attention term
    assert bench.train_flops(shape, [3, 5], [1, 2]) == 4800 + 180 + 3264
    assert bench.train_flops(shape, [3, 5], [1, 2], causal_discount=True) == 4800 + 180 + 1632


def test_model_shape_counts_tied_embeddings_once():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    for tie in (True, False):
        cfg = LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tie,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        shape = bench.model_shape(model)
        layers = sum(p.numel() for p in model.model.layers.parameters()) + model.model.norm.weight.numel()
        assert shape["decoder_params"] == layers
        assert shape["head_params"] == 50 * 16 and shape["attn_width"] == 16 and shape["layers"] == 2
        # the planner's shape (plan/models.py ModelShape fields) prices the same FLOPs
        total = sum(p.numel() for p in model.parameters())
        root = total - sum(p.numel() for p in model.model.layers.parameters())
        plan = SimpleNamespace(params=total, active_params=total, root_params=root, hidden=16, vocab=50)
        plan.__dict__.update(layers=2, heads=4, head_dim=4)
        assert bench.flops.shape_from_plan(plan) == shape


def test_kernel_bound_closed_form():
    from vespo_cli.bench.attention import kernel_bound

    assert kernel_bound(0.0, 0.1) == 1.0  # no attention: every FLOP at the peak
    assert kernel_bound(0.3, 1.0) == 1.0  # attention at the peak
    assert math.isclose(kernel_bound(0.5, 0.1), 1 / (0.5 + 5))
    assert math.isclose(kernel_bound(1.0, 0.2), 0.2)  # all attention: the kernel's own MFU


def test_step_split_shares_time_and_the_rest_on_made_up_numbers():
    from vespo_cli.bench.attention import step_split

    shape = {"layers": 2, "attn_width": 4}
    attn = 2 * 12 * 4 * (10**2 + 10**2)  # 19,200 attention FLOPs over two sequences of 10
    kernel = {"mfu": 0.25, "peak_bf16_gflops_per_cpu_s": 1e-9 * 1000}  # 250 FLOP per CPU s
    out = step_split(kernel, shape, [10, 10], 4 * attn, step_cpu_s=200.0, peak_gflops=1e-9 * 500)
    assert out["flop_share"] == 0.25 and math.isclose(out["mfu_bound"], 1 / (1 + 0.75))
    assert math.isclose(out["time_share"], attn / 250 / 200)  # 76.8 s of 200
    assert math.isclose(out["rest_mfu"], 3 * attn / (200 - attn / 250) / 500)
    assert step_split(kernel, shape, [10, 10], 4 * attn, 10.0, 1e-9 * 500)["rest_mfu"] is None  # kernel > step


def test_train_mfu_is_kernel_bounded_only_where_mfu_and_bound_both_miss():
    from vespo_cli.bench.suite import kernel_bounded

    assert kernel_bounded(0.23, 0.45)
    assert not kernel_bounded(0.23, 0.55)  # within the kernel's reach: the trainer's miss
    assert not kernel_bounded(0.6, 0.45) and not kernel_bounded(None, 0.45) and not kernel_bounded(0.23, None)


def test_kernel_bound_line_says_whether_the_target_is_in_reach():
    from vespo_cli.bench.report import kernel_bound_line

    k = {"implementation": "sdpa", "dtype": "bfloat16", "query_shape": [2, 9, 8, 4], "key_shape": [2, 3, 8, 4]}
    k.update(threads=1, mfu=0.2, flop_share=0.2, mfu_bound=0.5 / 1.1)
    assert "MFU 0.455 (below the 0.5 target: the kernel bounds it)." in kernel_bound_line(k)
    assert "within this kernel's reach" in kernel_bound_line({**k, "mfu_bound": 0.55})


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_capture_attention_records_the_models_first_call_and_times_it(impl):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from vespo_cli.bench.attention import attention_kernel, capture_attention

    sizes = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4)
    cfg = LlamaConfig(**sizes, num_key_value_heads=2, attn_implementation=impl)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    ids = torch.randint(0, 50, (3, 12))
    before = dict(ALL_ATTENTION_FUNCTIONS.items())
    with capture_attention(model) as calls:
        out = model(ids, use_cache=False).logits
    assert dict(ALL_ATTENTION_FUNCTIONS.items()) == before  # the original is back
    assert torch.equal(out, model(ids, use_cache=False).logits)  # every call ran the original
    (call,) = calls
    assert call.implementation == impl
    assert tuple(call.query.shape) == (3, 4, 12, 4) and tuple(call.key.shape) == (3, 2, 12, 4)
    k = attention_kernel(call, matmul_n=64, window_s=0.01)
    assert k["query_shape"] == [3, 4, 12, 4] and k["dtype"] == "bfloat16" and k["flops_per_call"] == 12 * 16 * 144 * 3
    assert k["fwd_bwd_cpu_s"] > 0 and k["mfu"] > 0 and math.isclose(k["utilisation_causal_count"], k["mfu"] / 2)


def test_matmul_rate_and_tree_rss_are_positive():
    wall, cpu = bench.matmul_peak(64, window_s=0.01)
    assert wall > 0 and cpu > 0
    assert bench.tree_rss() > bench.memory._rss(os.getpid()) * 0.99 > 0
    report = bench.PeakRSS(0.01).report()
    assert report["peak_tree_rss_gib"] > 0 and report["peak_main_rss_gib"] > 0


def test_policy_loss_probe_captures_the_step_inputs_and_times_them():
    """The probe replaces policy_loss wherever a vespo module imported it, records its inputs only while
    active (the graph-carrying tensor as a leaf that requires grad), and replays forward+backward."""
    import torch

    from vespo_cli import objectives
    from vespo_cli.bench.probes import PolicyLossProbe, patch_everywhere
    from vespo_cli.bench_objectives import objective_inputs

    try:  # the module whose optimizer step calls policy_loss (train/step.py since the trainer split)
        from vespo_cli.train import step as loop
    except ImportError:
        from vespo_cli.train import loop

    original = objectives.policy_loss
    probe = PolicyLossProbe()
    try:
        assert probe.places >= 2 and loop.policy_loss is not original
        logp, old, mask, adv = objective_inputs(2, 8)
        loop.policy_loss("vespo", logp, old, adv, mask)  # inactive: not recorded
        assert probe.calls == []
        probe.start()
        loss, _ = loop.policy_loss("vespo", logp * 1.0, old, adv, mask)
        loss.backward()  # the step's own graph still works
        probe.stop()
        assert len(probe.calls) == 1 and logp.grad is not None
        args, _ = probe.calls[0]
        assert args[1].is_leaf and args[1].requires_grad and not args[2].requires_grad
        assert torch.equal(args[1], logp.detach())
        assert probe.objective_s(repeats=1) > 0
    finally:
        patch_everywhere(loop.policy_loss, original)
    assert loop.policy_loss is original and objectives.policy_loss is original


def test_step_parts_add_up_to_the_step():
    from vespo_cli.bench.worker_trl import trl_parts
    from vespo_cli.bench.worker_vespo import _step_parts

    old = {"rollout_s": 5.0, "logprob_s": 0.5, "train_s": 3.0}
    parts = _step_parts(old, 10.0, 0.25, 0.05)
    assert parts["rollout"] == 4.95 and parts["train"] == 3.0 and math.isclose(sum(parts.values()), 10.0)
    new = {f"time_{p}_s": 1.0 for p in ("rollout", "old_logprob", "forward", "backward", "optimizer", "shard_io")}
    parts = _step_parts({**old, **new}, 10.0, 0.5, 0.05)
    assert "train" not in parts and parts["forward"] == 1.0 and parts["publish"] == 0.5
    assert parts["rollout"] == 0.95 and parts["shard_io"] == 0.05  # the trainer's rollout time holds the I/O
    assert math.isclose(parts["other"], 4.5) and math.isclose(sum(parts.values()), 10.0)
    t = {"_generate_and_score_completions": 6.0, "sync_weights": 0.5, "logps_outside_loss": 1.0}
    t.update(training_step=9.0, _prepare_inputs=6.0, compute_loss=1.0)
    parts = trl_parts(t, 10.0)
    assert parts == {"rollout": 4.5, "old_logprob": 1.0, "forward": 1.0, "backward": 2.0, "publish": 0.5, "other": 1.0}


def test_regression_check_reports_ratios_that_moved_more_than_15_percent():
    old = {"e2e_speedup_vs_trl_same_engine": 2.0, "train_mfu": 0.6, "objective_share_of_step": 0.01}
    new = {"e2e_speedup_vs_trl_same_engine": 1.6, "train_mfu": 0.65, "objective_share_of_step": None}
    assert bench.regression_check(old, new) == {"e2e_speedup_vs_trl_same_engine": (2.0, 1.6)}
    assert bench.regression_check(None, new) == {}


def test_e2e_rows_pair_workers_by_round_and_name_the_error_line():
    from vespo_cli.bench.e2e import _row, error_line, version_warnings

    def run(r, steps, peak):
        return {"round": r, "steps": [{"step_s": s} for s in steps], "setup": {"peak_tree_rss_gib": peak}}

    runs = {
        "v": [run(0, [9, 1.0, 3.0], 2.0), run(1, [9, 4.0], 2.5)],
        "t": [run(0, [9, 4.0], 5.0), run(1, [9, 8.0], 4.0)],
    }
    row = _row(runs, "v", "t")
    assert row["speedup_per_round"] == [2.0, 2.0] and row["speedup"] == 2.0 and row["peak_rss_ratio"] == 0.5
    tail = "Traceback (most recent call last):\n  File x\nRuntimeError: no CUDA\n[rank0] note\n"
    assert error_line(tail) == "RuntimeError: no CUDA"
    tail = '[rank0]:   File "/v/trl/generation/vllm_generation.py", line 511, in sync_weights\n[rank0]: KeyError: 3\n'
    assert error_line(tail) == "KeyError: 3 (in trl/generation/vllm_generation.py:511 sync_weights)"
    log = "x.py:48: UserWarning: TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have 0.32.0\n" * 2
    assert version_warnings(log) == ["TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have 0.32.0"]


def test_step_breakdown_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from vespo_cli.bench.figure import step_breakdown_figure

    parts = {"rollout": 2.0, "train": 1.0, "publish": 0.1, "other": 0.2}
    res = {
        "machine": {"cores": 2},
        "raw": {
            "e2e": {"prompts": 2, "n": 4, "max_tokens": 16, "vespo-hf": {"parts": parts}, "trl-hf": {"parts": parts}}
        },
    }
    path = step_breakdown_figure(res, tmp_path / "f.png")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


# heavy: the whole bench suite in worker processes, several with vLLM, by far the longest test of `make test`
# (timed per test on 2026-12-07); `make test-heavy` runs it, `make bench` is the command it covers.
@pytest.mark.heavy
@pytest.mark.vllm
def test_quick_bench_writes_json_and_markdown(tmp_path):
    """The whole suite at smoke-test sizes (tiny model, vLLM + HF engines, TRL skipped): every
    headline key is present, the measured ones are finite numbers, TRL's are null."""
    from vespo_cli.bench.suite import kernel_bounded

    res = bench.run_bench(tmp_path, quick=True)
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data == json.loads(json.dumps(res))
    for key in bench.HEADLINE:
        assert key in data
    for key in (
        "train_mfu",
        "rollout_speedup_vllm_vs_hf",
        "objective_share_of_step",
        "shard_io_share",
        "study_step_speedup",
        "study_step_vs_plain",
        "study_train_mfu",
        "attention_kernel_mfu",
        "attention_flop_share",
    ):
        assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, key
    for key in ("e2e_speedup_vs_trl_same_engine", "e2e_speedup_vs_trl_vllm", "peak_rss_ratio_vs_trl"):
        assert data[key] is None, key
    assert data["objective_share_of_step"] < 1 and data["async_speedup"] > 0
    m = data["machine"]
    assert m["cores"] >= 1 and m["torch"] and m["vllm"] and len(m["load_avg_at_start"]) == 3
    sz = bench.sizes(True)
    for kind in ("vespo-hf", "vespo-vllm"):
        e2e = data["raw"]["e2e"][kind]
        assert len(e2e["runs"]) == sz["e2e_rounds"] and e2e["peak_tree_rss_gib"] > 0
        assert all(len(run["steps"]) == sz["e2e_steps"] + 1 for run in e2e["runs"])
        assert e2e["runs"][0]["steps"][-1]["objective_calls"] >= 1
        assert math.isclose(sum(e2e["parts"].values()), e2e["step_s_median"], rel_tol=0.5)
    assert (tmp_path / "step_breakdown.png").is_file() and data["figure"] == "step_breakdown.png"
    train = data["raw"]["train"]
    assert set(train["policies"]) == set(bench.TRAIN_POLICIES) and train["policy"] == "bf16_params"
    assert train["mfu"] == train["policies"]["bf16_params"]["mfu"] and train["bf16_params_speedup_vs_autocast"] > 0
    kernel = train["attention_kernel"]
    assert kernel["query_shape"][0] == sz["train_micro_rows"] and 0 < kernel["mfu_bound"] <= 1
    assert ("train_mfu_kernel_bound" in data) == kernel_bounded(data["train_mfu"], kernel["mfu_bound"])
    md = (tmp_path / "latest.md").read_text()
    assert "vespo bench" in md and "| metric |" in md and "## Where a step goes" in md
    assert data["regression_check"]["against"] is None  # no earlier latest.json in tmp_path
    from vespo_cli.bench.suite import rerender

    rerender(tmp_path)  # the same targets: the same files
    assert (tmp_path / "latest.md").read_text() == md and json.loads((tmp_path / "latest.json").read_text()) == data


def test_render_rewrites_the_committed_bench_from_its_measurements(tmp_path):
    """`python -m vespo_cli.bench render` on the committed latest.json: measurements untouched, targets re-applied."""
    import subprocess
    import sys

    committed = json.loads(Path("reports/bench/latest.json").read_text())
    shutil.copy("reports/bench/latest.json", tmp_path / "latest.json")
    argv = [sys.executable, "-m", "vespo_cli.bench", "render", str(tmp_path)]
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    again = json.loads((tmp_path / "latest.json").read_text())
    assert {k for k in committed if committed[k] != again[k]} <= {"targets", "pass"}
    md = (tmp_path / "latest.md").read_text()
    assert md == Path("reports/bench/latest.md").read_text()  # committed files are this code's rendering


@pytest.mark.parametrize(
    ("argv", "rc"), [(["--help"], 0), ([], 2), (["--out"], 2), (["section", "nope", "x.json"], 2), (["section"], 2)]
)
def test_bench_module_rejects_what_is_not_a_suite_section_or_worker(argv, rc, tmp_path):
    """`python -m vespo_cli.bench --help` printed nothing and ran the whole suite into a folder '--help'."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "vespo_cli.bench", *argv], cwd=tmp_path, capture_output=True, text=True)
    assert (
        p.returncode == rc and p.stderr.startswith("usage: python -m vespo_cli.bench") and not list(tmp_path.iterdir())
    )


def test_reference_trainer_is_the_tree_at_its_revision_and_a_bad_revision_says_why():
    """The study section's `before` trainer: main's train/step.py at STUDY_REFERENCE_REV, imported beside
    this tree's (its own package, its own Config class); a revision git does not know is one line."""
    import subprocess

    from vespo_cli.bench.reference import STUDY_REFERENCE_REV, reference_config, reference_step_module
    from vespo_cli.config import load_config

    step = reference_step_module()
    old = subprocess.run(
        ["git", "show", f"{STUDY_REFERENCE_REV}:vespo_cli/train/step.py"], capture_output=True, text=True, check=True
    ).stdout
    assert open(step.__file__).read() == old and step.__name__ != "vespo_cli.train.step"
    cfg = reference_config(step, load_config("tiny", None, []))
    assert type(cfg).__module__.startswith(step.__name__.rsplit(".", 2)[0]) and cfg.model.path == "tiny"
    with pytest.raises(RuntimeError, match="git archive 0{40}"):
        reference_step_module("0" * 40)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a machine with a GPU runs the check instead")
@pytest.mark.parametrize("how", ["make", "module"])
def test_gpu_check_refuses_without_cuda_in_one_line(how, tmp_path):
    """`make gpu-check` (and its module) on a machine without CUDA: exit 2, one line saying so, nothing written."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if how == "make":
        argv, cwd = ["make", "--no-print-directory", "-s", "-C", str(root), "gpu-check"], root
    else:
        argv, cwd = [sys.executable, "-m", "vespo_cli.bench.gpu", str(tmp_path / "gpu")], root
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "gpu-check: no CUDA device here" in lines[0], p.stderr
    assert not (tmp_path / "gpu").exists()


def test_trl_vllm_worker_runs_in_its_own_venv(monkeypatch):
    """TRL 1.16 needs vLLM <= 0.31: only its vLLM side runs in VESPO_BENCH_TRL_PYTHON (`make bench-trl-env`)."""
    import sys

    from vespo_cli.bench.protocol import TRL_PYTHON_ENV, worker_python

    monkeypatch.delenv(TRL_PYTHON_ENV, raising=False)
    assert worker_python("trl-vllm") == sys.executable
    monkeypatch.setenv(TRL_PYTHON_ENV, "/opt/trl/bin/python")
    assert worker_python("trl-vllm") == "/opt/trl/bin/python"
    assert {worker_python(k) for k in ("trl-hf", "vespo-vllm", "vespo-hf")} == {sys.executable}


def test_trl_vllm_python_given_relative_is_made_absolute_not_resolved(monkeypatch, tmp_path):
    """`make bench` passes `.venv-trl/bin/python`; the workers run in their log folder, so the path is made
    absolute against the bench's own cwd, and kept a symlink (resolving it would leave the venv)."""
    import sys

    from vespo_cli.bench.protocol import TRL_PYTHON_ENV, worker_python

    (tmp_path / ".venv-trl" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-trl" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRL_PYTHON_ENV, ".venv-trl/bin/python")
    assert worker_python("trl-vllm") == str(tmp_path / ".venv-trl" / "bin" / "python")


def test_study_step_target_is_met_by_either_figure():
    """Issue 33: the study step 1.5x faster than before, or within 10% of plain transformers fwd+bwd."""
    from vespo_cli.bench.suite import passes, targets_text

    def study(speedup, vs_plain):
        return passes({"study_step_speedup": speedup, "study_step_vs_plain": vs_plain})["study_step_speedup"]

    assert study(1.19, 0.74) is True  # 2026-12-06: not 1.5x faster, but faster than plain
    assert study(1.19, 1.3) is False
    assert study(1.6, 1.3) is True
    assert study(1.6, None) is True and study(1.2, None) is False
    assert study(None, None) is None
    assert targets_text()["study_step_speedup"] == ">= 1.5, or study_step_vs_plain <= 1.1"


def test_worker_env_names_the_interpreter_and_its_versions(monkeypatch):
    import sys

    import torch

    from vespo_cli.bench.e2e import worker_env
    from vespo_cli.bench.protocol import TRL_PYTHON_ENV

    monkeypatch.delenv(TRL_PYTHON_ENV, raising=False)
    env = worker_env("trl-vllm")
    assert env["python"] == sys.executable and env["torch"] == torch.__version__
