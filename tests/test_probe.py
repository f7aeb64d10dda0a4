"""`vespo probe`: the per-group gradients (K = 0 identity, agreement with the trainer's autograd), the
sketch's error bound, the bootstrap's coverage, one-line errors, and the `--quick` run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vespo_cli.cli import app
from vespo_cli.config import load_config
from vespo_cli.objectives import policy_loss
from vespo_cli.probe.bootstrap import Gram, resample_counts, summarize
from vespo_cli.probe.gradients import Batch, batch_sketches, drift_stats, gradient_subset, objective_params
from vespo_cli.probe.report import REQUIRED, finite_record, reading
from vespo_cli.probe.sketch import CountSketch, cosine_error_bound
from vespo_cli.train.batch import Rows, make_microbatch
from vespo_cli.train.forward import token_logprobs

OBJECTIVES = ("grpo", "gspo", "sapo", "cispo", "vespo", "topr")


class Exact:
    """The identity in place of the sketch: the flattened gradient itself."""

    def __init__(self, params):
        self.dim = sum(p.numel() for p in params)

    def __call__(self, tensors):
        return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from vespo_cli.models import load_model

    return load_model(tiny_model_path, "float32").eval()


@pytest.fixture(scope="module")
def batch(chat_prompts) -> Batch:
    """3 prompt groups × 4 responses of 3–9 random tokens, rewards with variance in groups 0 and 2."""
    gen = torch.Generator().manual_seed(0)
    prompts, responses, groups = [], [], []
    for g, p in enumerate(chat_prompts):
        for s in range(4):
            prompts.append(p)
            responses.append(torch.randint(3, 4000, (3 + (5 * g + s) % 7,), generator=gen).tolist())
            groups.append(f"g{g}")
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 0], dtype=torch.float32)
    rows = Rows(
        prompts, responses, [None] * 12, rewards, rewards > 0, groups, torch.zeros(12, dtype=torch.long), ["s"] * 12
    )
    return Batch(rows, [list(range(4 * g, 4 * g + 4)) for g in range(3)])


def algos(names=OBJECTIVES) -> dict:
    return {name: load_config(None, name).algorithm for name in names}


def test_batch_advantages_and_informative_groups(batch):
    assert batch.informative == [True, False, True]
    assert batch.adv[4:8].tolist() == [0.0] * 4
    assert batch.adv_pg.tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.25, -0.25, 0.75, -0.25]
    assert (batch.num_tokens, batch.num_seqs) == (sum(len(y) for y in batch.rows.response_ids), 12)


def test_k0_stale_gradient_equals_on_policy_gradient_for_every_objective(model, batch):
    """θ_K = θ₀: Δ = 0, every objective reduces to REINFORCE with its aggregation, so its gradient on
    the behaviour data equals its on-policy gradient on the same samples (exact, unsketched)."""
    with gradient_subset(model, 1) as params:
        exact = Exact(params)
        _, old = batch_sketches(model, batch, {}, [], [], exact, 1.0)
        stale, logp = batch_sketches(model, batch, algos(), old, params, exact, 1.0)
        fresh, _ = batch_sketches(model, batch, algos(), None, params, exact, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(logp, old))  # the same forward: Δ = 0 exactly
    for name in OBJECTIVES:
        s, f = stale[name].double().sum(0), fresh[name].double().sum(0)
        assert s.norm() > 0
        assert float(s @ f / (s.norm() * f.norm())) == pytest.approx(1.0, abs=1e-12)
        torch.testing.assert_close(s, f, rtol=1e-12, atol=0)
        assert stale[name][1].abs().max() == 0  # the group without reward variance: exactly 0
    assert drift_stats(logp, old, batch) == {
        "delta_abs_mean": 0.0,
        "kl": 0.0,
        "log_w_std": 0.0,
        "log_w_max_abs": 0.0,
        "ess_w": 1.0,
    }


def test_group_gradients_sum_to_the_trainer_autograd_gradient(model, batch):
    """Σ over groups of the probe's subset gradient (forward to h, ∂logp/∂h, backward through the
    subset) equals autograd through the trainer's own forward and `policy_loss` on the whole batch,
    at drifted weights (Δ ≠ 0, clipping active)."""
    algo = load_config(None, "grpo").algorithm
    with gradient_subset(model, 1) as params:
        exact = Exact(params)
        _, old = batch_sketches(model, batch, {}, [], [], exact, 1.0)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for i, p in enumerate(params):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.05)
        try:
            probe, _ = batch_sketches(model, batch, {"grpo": algo}, old, params, exact, 1.0)
            mb = make_microbatch(batch.rows, list(range(12)))
            logp, _ = token_logprobs(model, mb)
            old_pad = mb.unflatten(torch.cat(old))
            loss, metrics = policy_loss("grpo", logp, old_pad, batch.adv, mb.mask, **objective_params(algo))
            want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
    assert metrics["clip_frac"] > 0 and metrics["delta_abs_mean"] > 0
    torch.testing.assert_close(probe["grpo"].double().sum(0), want, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- sketch


def test_sketch_is_linear_and_exact_without_collisions():
    sk = CountSketch([5, 3], dim=2**16, seed=1)
    codes = torch.cat(sk.codes).long()
    assert len(set((codes % sk.dim).tolist())) == 8  # 8 coordinates in 65536 buckets: no collision (seed 1)
    gen = torch.Generator().manual_seed(0)
    x, y = ([torch.randn(n, generator=gen, dtype=torch.float64) for n in (5, 3)] for _ in range(2))
    flat = torch.cat
    assert float(sk(x) @ sk(y)) == pytest.approx(float(flat(x) @ flat(y)), rel=1e-12)
    torch.testing.assert_close(sk([2 * a - b for a, b in zip(x, y)]), 2 * sk(x) - sk(y), rtol=1e-12, atol=1e-12)


def test_sketch_inner_product_variance_is_the_closed_form():
    """Var ⟨Sx, Sy⟩ = (‖x‖²‖y‖² + ⟨x,y⟩² − 2Σx²y²)/k (sketch.py (1)) over 600 sketch seeds, and the
    mean is ⟨x, y⟩: both within 4 standard errors."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, generator=gen, dtype=torch.float64), torch.randn(400, generator=gen, dtype=torch.float64)
    y = y + 0.7 * x
    k, seeds = 64, 600
    vals = np.array(
        [float(CountSketch([400], k, seed=s)([x]) @ CountSketch([400], k, seed=s)([y])) for s in range(seeds)]
    )
    var = float((x @ x) * (y @ y) + (x @ y) ** 2 - 2 * (x * x * y * y).sum()) / k
    assert abs(vals.mean() - float(x @ y)) < 4 * math.sqrt(var / seeds)
    assert abs(vals.var() / var - 1) < 4 * math.sqrt(2 / seeds)


def test_sketch_preserves_cosines_within_the_stated_bound():
    """200 seeded random pairs of 50k-dim vectors with cosines across [−1, 1]: every sketched cosine
    is within `cosine_error_bound(k, 0.05)` of the true one (sketch.py (2))."""
    k, d = 2**16, 50_000
    bound = cosine_error_bound(k, 0.05)
    assert bound == pytest.approx(2 * math.sqrt(6 / (k * 0.05)) / (1 - math.sqrt(6 / (k * 0.05))))
    assert 0.08 < bound < 0.09
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for i in range(200):
        sk = CountSketch([d], k, seed=1000 + i)
        x = torch.randn(d, generator=gen, dtype=torch.float64) * torch.rand(d, generator=gen, dtype=torch.float64)
        z = torch.randn(d, generator=gen, dtype=torch.float64)
        t = -1 + 2 * i / 199
        y = t * x / x.norm() + math.sqrt(1 - t * t) * z / z.norm()
        true = float(x @ y / (x.norm() * y.norm()))
        sx, sy = sk([x]), sk([y])
        worst = max(worst, abs(float(sx @ sy / (sx.norm() * sy.norm())) - true))
    assert worst <= bound
    assert worst < 0.03  # and typically far inside it (about √(2/k) ≈ 0.0055 per standard deviation)


# --------------------------------------------------------------------------- bootstrap


def test_gram_quadratic_forms_are_the_resampled_sums():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=gen, dtype=torch.float64), torch.randn(5, 7, generator=gen, dtype=torch.float64)
    gram = Gram({"a": a, "b": b})
    counts = resample_counts(5, 3, seed=0)
    assert counts.shape == (4, 5) and counts[0].tolist() == [1.0] * 5 and (counts.sum(1) == 5).all()
    for w, cos, na in zip(counts, gram.cosine("a", "b", counts), gram.norm("a", counts)):
        sa, sb = torch.tensor(w) @ a, torch.tensor(w) @ b
        assert cos == pytest.approx(float(sa @ sb / (sa.norm() * sb.norm())), rel=1e-12)
        assert na == pytest.approx(float(sa.norm()), rel=1e-12)
    assert np.isnan(Gram({"a": a, "z": torch.zeros(5, 7)}).cosine("a", "z", counts)).all()


def test_bootstrap_interval_covers_the_true_cosine():
    """Synthetic groups a_g = μ_a + noise, b_g = μ_b + noise with cos(μ_a, μ_b) = 0.6 known: the 95%
    interval of cos(Σa, Σb) covers 0.6 in one case, and in 90–98% of 300 independent cases (the
    percentile interval runs a little under 95% at 60 groups: 0.92 here, as percentile intervals
    of a nonlinear statistic do at small n)."""
    d, groups = 4, 60
    mu_a = np.array([1.0, 0.0, 0.0, 0.0])
    mu_b = np.array([0.6, 0.8, 0.0, 0.0])
    rng = np.random.default_rng(0)
    covered = []
    for rep in range(300):
        a = mu_a + 0.5 * rng.standard_normal((groups, d))
        b = mu_b + 0.5 * rng.standard_normal((groups, d))
        gram = Gram({"a": torch.from_numpy(a), "b": torch.from_numpy(b)})
        point, lo, hi = summarize(gram.cosine("a", "b", resample_counts(groups, 500, seed=rep)))
        assert lo <= point <= hi
        if rep == 0:
            assert lo < 0.6 < hi
        covered.append(lo <= 0.6 <= hi)
    assert 0.90 <= np.mean(covered) <= 0.98


def test_reading_names_where_an_objective_falls_below_the_noise_floor():
    def rec(o, k, cos, lo, hi):
        return {
            "objective": o,
            "staleness": k,
            "cosine": cos,
            "cosine_low": lo,
            "cosine_high": hi,
            "noise_floor": 0.5,
            "noise_floor_low": 0.4,
            "noise_floor_high": 0.6,
            "cosine_pg": 0.3,
            "norm_ratio": 1.0,
            "ess": 0.5,
        }

    lines = reading(
        [
            rec("x", 0, 0.5, 0.4, 0.6),
            rec("x", 4, 0.2, 0.1, 0.3),
            rec("x", 16, 0.0, -0.1, 0.1),
            rec("y", 0, 0.5, 0.4, 0.6),
            rec("y", 16, 0.45, 0.3, 0.55),
            {**rec("z", 0, 0.1, -0.2, 0.3), "noise_floor_low": -0.1},
        ]
    )
    assert lines[0] == (
        "- **x**: at the noise floor at K = 0; below it at K = 4, 16 (first: K = 4, cosine 0.200 "
        "[0.100, 0.300] against a floor of 0.500 [0.400, 0.600]); no significant agreement left while "
        "fresh estimates agree at K = 16. At K = 16: cosine 0.000, to the reference 0.300, norm ratio "
        "1.000, ESS/n 0.500."
    )
    assert lines[1].startswith(
        "- **y**: at the noise floor at K = 0, 16; no significant agreement left while fresh "
        "estimates agree at K = none."
    )
    assert lines[2].startswith(
        "- **z**: at the noise floor at K = 0; no significant agreement left while fresh estimates agree at K = none."
    )
    assert lines[3].startswith("- Where two fresh estimates do not agree significantly") and "at K = 0:" in lines[3]


# --------------------------------------------------------------------------- command


@pytest.mark.parametrize(
    "args, message",
    [
        (["--staleness", "-1"], "error: --staleness -1: expected a non-negative"),
        (["--prompts", "1"], "error: --prompts 1: expected at least 2 prompt groups"),
        (["--blocks", "0"], "error: --blocks 0: expected at least 1"),
        (["--bootstrap", "10"], "error: --bootstrap 10: expected at least 100"),
        (["--reward", "length"], "error: --reward length: expected one of auto, grader, even-tokens"),
        (["--shards", "nowhere"], "error: --shards nowhere: no such directory"),
        (["--run", "nowhere"], "error: --run nowhere: not a run directory"),
        (["--algo", "nosuch"], "error: "),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["probe", "--preset", "tiny", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), result.stderr
    assert "nosuch" in err[0] if "nosuch" in args else True
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quick_probe_on_tiny_end_to_end(tmp_path):
    """`vespo probe --preset tiny --quick`: every objective at every K with finite figures; at K = 0
    no drift and every objective's stale gradient is the same one (all reduce to REINFORCE). The
    random tiny model earns no reward from the grader, so `--reward auto` probes with even-tokens."""
    out = tmp_path / "probe"
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--preset",
            "tiny",
            "--quick",
            "--algo",
            "grpo",
            "--algo",
            "gspo",
            "--algo",
            "sapo",
            "--algo",
            "cispo",
            "--algo",
            "vespo",
            "--algo",
            "topr",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    records = json.loads((out / "probe.json").read_text())
    assert sorted({(r["objective"], r["staleness"]) for r in records}) == sorted(
        (o, k) for o in ("cispo", "grpo", "gspo", "sapo", "topr", "vespo") for k in (0, 1, 2, 4)
    )
    for r in records:
        assert set(REQUIRED) <= set(r) and finite_record(r), r
        assert -1 <= r["cosine_low"] <= r["cosine"] <= r["cosine_high"] <= 1
    k0 = [r for r in records if r["staleness"] == 0]
    assert {r["delta_abs_mean"] for r in k0} == {0.0} and {r["ess"] for r in k0} == {1.0}
    assert max(r["cosine"] for r in k0) - min(r["cosine"] for r in k0) < 1e-9
    assert all(r["delta_abs_mean"] > 0 for r in records if r["staleness"] > 0)
    for name in ("report.md", "settings.json", "fidelity.png", "drift.png", "offpolicy.png"):
        assert (out / name).stat().st_size > 0
    assert "## Reading" in (out / "report.md").read_text()
    assert json.loads((out / "settings.json").read_text())["reward"] == "even-tokens"


@pytest.mark.slow
def test_grader_without_reward_variance_is_a_one_line_error(tmp_path):
    """The tiny preset's random model never solves a problem: with the grader every gradient is 0."""
    result = CliRunner().invoke(
        app,
        ["probe", "--preset", "tiny", "--quick", "--reward", "grader", "--out", str(tmp_path / "p")],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 2, result.output
    err = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # after the model-loading bar
    assert len(err) == 1 and err[0].startswith("error: --reward grader: no prompt group"), result.stderr
    assert result.stderr.rstrip().endswith(err[0]) and "Traceback" not in result.output


@pytest.mark.slow
def test_probe_takes_theta_k_from_a_run_and_behaviour_data_from_shards(tmp_path, monkeypatch):
    """`--run RUN`: θ_K = RUN/checkpoints/step-K; `--shards DIR`: D₀ = the first prompt groups of DIR
    (here the run's own first rollout batch, sampled at θ₀), fresh samples graded against the same
    problems; a K without a checkpoint is a one-line error."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--run-dir",
            "run",
            "--set",
            "trainer.steps=2",
            "--set",
            "trainer.save_every=1",
            "--set",
            "trainer.keep_checkpoints=3",
        ],
    )
    assert trained.exit_code == 0, trained.output
    missing = runner.invoke(app, ["probe", "--run", "run", "--staleness", "3"], env={"COLUMNS": "300"})
    assert missing.exit_code == 2
    assert missing.stderr.strip() == "error: --staleness 3: run has no checkpoints/step-3 (steps saved: 2)"
    result = runner.invoke(
        app,
        [
            "probe",
            "--run",
            "run",
            "--shards",
            "run/rollouts",
            "--staleness",
            "0",
            "--staleness",
            "2",
            "--reward",
            "even-tokens",
            "--quick",
            "--algo",
            "vespo",
            "--out",
            "probe",
        ],
    )
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert [(r["objective"], r["staleness"]) for r in records] == [("vespo", 0), ("vespo", 2)]
    assert all(finite_record(r) for r in records)
    assert records[0]["delta_abs_mean"] == 0.0 and records[1]["delta_abs_mean"] > 0
    settings = json.loads((tmp_path / "probe" / "settings.json").read_text())
    assert settings["run"] == "run" and settings["shards"] == "run/rollouts" and settings["prompts"] == 4
