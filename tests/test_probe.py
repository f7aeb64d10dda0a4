"""`vespo probe`: the per-group gradients (K = 0 identity, agreement with the trainer's autograd), the
sketch's error bound, the BCa bootstrap (exact cases, coverage, p-values), the disattenuated cosine and
the K = 0 calibration on synthetic gradients with known truth, the judged report text, one-line errors,
the `--age` flag and its deprecated alias, and the `--quick` run end to end (the K = 0 calibration on
the tiny model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vespo_cli.cli import app
from vespo_cli.config import load_config
from vespo_cli.objectives import policy_loss
from vespo_cli.probe.bootstrap import Gram, acceleration, bca, jackknife_counts, resample_counts
from vespo_cli.probe.figures import figures
from vespo_cli.probe.gradients import Batch, batch_sketches, drift_stats, gradient_subset, objective_params
from vespo_cli.probe.judge import judge, prompts_to_resolve
from vespo_cli.probe.reading import calibration_lines, floor_lines, leave_lines
from vespo_cli.probe.report import JUDGED, REQUIRED, finite_record
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


def test_objectives_carry_algorithm_overrides_such_as_aggregation(model, batch):
    """`--algo vespo:aggregation=seq-mean-token-mean` (compare's item syntax) probes VESPO with that
    aggregation: at K = 0 (Δ = 0) its gradient is exactly GSPO's (both REINFORCE, seq-mean-token-mean)
    and not token-mean VESPO's (the responses' lengths differ)."""
    from vespo_cli.probe.command import _algo_dict, _objectives

    objectives = _objectives(["vespo:aggregation=seq-mean-token-mean", "vespo", "gspo"], "tiny", [])
    label = "vespo+aggregation=seq-mean-token-mean"
    assert list(objectives) == [label, "vespo", "gspo"]
    assert objectives[label].aggregation == "seq-mean-token-mean" and objectives["vespo"].aggregation is None
    assert _algo_dict(objectives[label])["aggregation"] == "seq-mean-token-mean"
    with gradient_subset(model, 1) as params:
        exact = Exact(params)
        _, old = batch_sketches(model, batch, {}, [], [], exact, 1.0)
        g, _ = batch_sketches(model, batch, objectives, old, params, exact, 1.0)
    torch.testing.assert_close(g[label], g["gspo"], rtol=1e-6, atol=1e-12)
    assert not torch.allclose(g[label], g["vespo"], rtol=1e-3)


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


def test_shared_prompt_forward_equals_the_full_forward_with_its_gradient(model, chat_prompts):
    """A prompt group's prompt run once (its keys and values repeated for every response) gives the hidden
    states of the full right-padded forward and the same subset gradient, to fp32 rounding: an error bound
    of (sequence length) · ε · max|h|, the worst case for sums over as many terms in another order."""
    from vespo_cli.train.forward import decoder_and_head, response_hidden, shared_prompt_hidden

    gen = torch.Generator().manual_seed(1)
    prompt = chat_prompts[0]
    responses = [torch.randint(3, 4000, (n,), generator=gen).tolist() for n in (5, 1, 9, 4)]
    rows = Rows([prompt] * 4, responses, [None] * 4, torch.zeros(4), torch.zeros(4, dtype=torch.bool), ["g"] * 4,
                torch.zeros(4, dtype=torch.long), ["s"] * 4)  # fmt: skip
    mb = make_microbatch(rows, [0, 1, 2, 3])
    decoder, _ = decoder_and_head(model)
    weights = torch.randn(sum(len(y) for y in responses), decoder.config.hidden_size, generator=gen)
    with gradient_subset(model, 1) as params:
        full, shared = response_hidden(decoder, mb), shared_prompt_hidden(decoder, mb, len(prompt))
        grads = [torch.autograd.grad((h * weights).sum(), params) for h in (full, shared)]
    full, shared, eps, length = full.detach(), shared.detach(), torch.finfo(torch.float32).eps, mb.input_ids.shape[1]
    assert shared.shape == full.shape == (19, decoder.config.hidden_size)
    torch.testing.assert_close(shared, full, rtol=0, atol=length * eps * float(full.abs().max()))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=length * eps * float(a.abs().max()))


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


def test_gram_in_column_chunks_is_the_float64_product(monkeypatch):
    """Gram's matrix, summed over column chunks of the float32 sketches (the last one short), is M Mᵀ of
    the float64 M to float64 rounding: k · ε · max |x|² per entry bounds any order of the k-term sums."""
    from vespo_cli.probe import bootstrap

    monkeypatch.setattr(bootstrap, "GRAM_COLUMNS", 64)
    gen = torch.Generator().manual_seed(0)
    series = {n: torch.randn(6, 150, generator=gen) for n in "abc"}
    m = torch.cat([series[n].double() for n in "abc"])
    bound = 150 * torch.finfo(torch.float64).eps * float(m.abs().max()) ** 2
    np.testing.assert_allclose(Gram(series).matrix, (m @ m.T).numpy(), rtol=0, atol=bound)
    assert Gram(series).matrix.shape == (18, 18)


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


def test_sibling_copies_replace_repeated_noise_in_squared_norms():
    """Gram (4): with a sibling, a resample's squared norm counts group g's own noise w_g times and
    ⟨x_g, x′_g⟩ for the other w_g² − w_g copy pairs; rows of 0/1 counts are untouched."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    plain, sib = Gram({"x": x, "y": y}), Gram({"x": x, "y": y}, {"x": "y"})
    w = np.array([[1.0, 1, 1], [0, 1, 1], [2, 0, 1], [0, 0, 3]])
    want = [float((torch.tensor(r) @ x).norm() ** 2) for r in w]
    assert plain.inner("x", "x", w) == pytest.approx(want, rel=1e-12)
    corr = [0.0, 0.0, 2 * float(x[0] @ y[0] - x[0] @ x[0]), 6 * float(x[2] @ y[2] - x[2] @ x[2])]
    assert sib.inner("x", "x", w) == pytest.approx(np.add(want, corr), rel=1e-12)
    assert sib.inner("y", "y", w)[:2] == pytest.approx(plain.inner("y", "y", w)[:2], rel=1e-12)
    assert sib.inner("x", "y", w) == pytest.approx(plain.inner("x", "y", w), rel=1e-12)  # two draws: unchanged
    assert jackknife_counts(3).tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def test_bca_without_bias_or_skew_is_the_percentile_interval():
    """z₀ = 0 (the point is the median of the resamples) and a = 0 (symmetric jackknife): (3) gives
    α̃ = α, the percentile interval, and the p-value of the point itself is 1."""
    boot = np.arange(-50.0, 51.0)
    boot = boot[boot != 0]
    samples = np.concatenate([[0.0], boot])
    jack = np.array([-1.0, 0.0, 1.0])
    assert acceleration(jack) == 0.0
    e = bca(samples, jack)
    assert (e.low, e.high) == tuple(np.quantile(boot, [0.025, 0.975]))
    assert e.point == 0.0 and e.p == 1.0 and e.se == pytest.approx(float(boot.std(ddof=1)))
    assert np.isnan(bca(np.array([1.0, np.nan, np.nan]), jack).low)


def test_acceleration_is_the_jackknife_skewness_formula():
    """(2) on jackknife values 0, 0, 3: θ̄ = 1, d = (1, 1, −2), Σd³ = −6, Σd² = 6: a = −6 / (6 · 6^1.5)."""
    assert acceleration(np.array([0.0, 0.0, 3.0])) == pytest.approx(-(6**-1.5), rel=1e-12)
    assert acceleration(np.array([1.0, np.nan])) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(-1.0, 1.0), st.floats(0.2, 3.0))
def test_bca_pvalue_agrees_with_the_interval(seed, shift, skew):
    """The p-value inverts (3): p < 0.05 exactly when the 95% interval excludes 0, away from the
    boundary by the interpolation of the empirical quantiles."""
    rng = np.random.default_rng(seed)
    boot = shift + rng.gamma(skew, 1.0, 999) - skew
    jack = shift + rng.gamma(skew, 1.0, 20) - skew
    e = bca(np.concatenate([[shift], boot]), jack)
    assert e.low <= e.high
    if e.p < 0.045:
        assert not e.low <= 0.0 <= e.high
    if e.p > 0.055:
        assert e.low <= 0.0 <= e.high


def test_bca_interval_covers_the_true_cosine_with_the_point_inside():
    """Synthetic groups a_g = μ_a + noise, b_g = μ_b + noise with cos(μ_a, μ_b) = 0.6 known: the 95%
    BCa interval of cos(Σa, Σb) holds its point in every case and covers 0.6 in 90–98% of 300
    independent cases (0.93 here)."""
    d, groups = 4, 60
    mu_a = np.array([1.0, 0.0, 0.0, 0.0])
    mu_b = np.array([0.6, 0.8, 0.0, 0.0])
    rng = np.random.default_rng(0)
    covered = []
    for rep in range(300):
        a = mu_a + 0.5 * rng.standard_normal((groups, d))
        b = mu_b + 0.5 * rng.standard_normal((groups, d))
        gram = Gram({"a": torch.from_numpy(a), "b": torch.from_numpy(b)})
        boot = gram.cosine("a", "b", resample_counts(groups, 500, seed=rep))
        e = bca(boot, gram.cosine("a", "b", jackknife_counts(groups)))
        assert e.low <= e.point <= e.high
        covered.append(e.low <= 0.6 <= e.high)
    assert 0.90 <= np.mean(covered) <= 0.98


def _study(groups: int, mu_stale: np.ndarray, rho_fresh: float, rho_stale: float, seed: int) -> dict:
    """One synthetic probe record: per-group gradients (dimension 200) of two stale draws with mean
    mu_stale and two fresh draws with mean e₁, noise set so the reliabilities of the sums of `groups`
    groups are rho_stale and rho_fresh (ρ = G|μ|² / (G|μ|² + dσ²)), the reference = the fresh draws."""
    from vespo_cli.probe.figures import siblings

    d = 200
    rng = np.random.default_rng(seed)
    e1 = np.eye(d)[0]

    def sigma(rho, mu):
        return math.sqrt(groups * float(mu @ mu) * (1 - rho) / rho / d)

    series = {
        f"{h}/x": mu + sigma(rho, mu) * rng.standard_normal((groups, d))
        for h, mu, rho in (
            ("stale", mu_stale, rho_stale),
            ("redraw", mu_stale, rho_stale),
            ("a", e1, rho_fresh),
            ("b", e1, rho_fresh),
        )
    }
    series["a/pg"], series["b/pg"] = series["a/x"], series["b/x"]
    gram = Gram({k: torch.from_numpy(v) for k, v in series.items()}, siblings(["x"]))
    return figures(gram, resample_counts(groups, 300, seed), jackknife_counts(groups), "x")


def test_disattenuated_cosine_recovers_the_cosine_of_the_expected_gradients():
    """cos(μ_S, μ_F) = 0.6, reliabilities ρ_F = 0.5 and ρ_S = 0.3 (a noisier stale estimator): the raw
    cosine is attenuated to about 0.6 · √0.15 = 0.23, the floors estimate the reliabilities, and the
    disattenuated cosine (figures.py (D)) is 0.6 on average; its interval holds the truth and the
    gap is resolved below 0 in a good share of 80 studies of 40 prompts."""
    mu_s = 0.6 * np.eye(200)[0] + 0.8 * np.eye(200)[1]
    recs = [_study(40, mu_s, 0.5, 0.3, seed) for seed in range(80)]
    mean = {k: np.mean([r[k] for r in recs]) for k in ("cosine", "noise_floor", "floor_stale", "cosine_disattenuated")}
    assert mean["cosine"] == pytest.approx(0.6 * math.sqrt(0.15), abs=0.02)
    assert (mean["noise_floor"], mean["floor_stale"]) == (pytest.approx(0.5, abs=0.02), pytest.approx(0.3, abs=0.02))
    assert mean["cosine_disattenuated"] == pytest.approx(0.6, abs=0.03)
    assert np.mean([r["cosine_disattenuated_low"] <= 0.6 <= r["cosine_disattenuated_high"] for r in recs]) >= 0.9
    assert np.mean([r["noise_floor_low"] <= 0.5 <= r["noise_floor_high"] for r in recs]) >= 0.9
    assert all(r[f"{k}_low"] <= r[k] <= r[f"{k}_high"] for r in recs for k in ("gap", "noise_floor", "floor_stale"))
    assert np.mean([r["gap_p"] < 0.05 and r["gap"] < 0 for r in recs]) > 0.3


def test_calibration_false_alarm_rate_is_at_most_the_level():
    """K = 0 in miniature: the stale draws are fresh draws (μ_S = μ_F, ρ_S = ρ_F = 0.5): the gap's
    two-sided test at 0.05 rejects in at most 5% of 100 studies of 24 prompts (the paired BCa test is
    conservative here: the bootstrap over-disperses the noise × noise part of a cross inner product),
    the disattenuated cosine is 1 on average, and the floors' intervals hold the true 0.5."""
    recs = [_study(24, np.eye(200)[0], 0.5, 0.5, 1000 + seed) for seed in range(100)]
    assert np.mean([r["gap_p"] < 0.05 for r in recs]) <= 0.05
    assert np.mean([r["cosine_disattenuated"] for r in recs]) == pytest.approx(1.0, abs=0.03)
    assert np.mean([r["noise_floor_low"] <= 0.5 <= r["noise_floor_high"] for r in recs]) >= 0.93


def test_prompts_to_resolve_scales_the_standard_error():
    """n' = n (z s / f)²: 24 · (1.960 · 0.2 / 0.26)² = 54.56 → 55; a floor ≤ 0 is never resolved."""
    assert prompts_to_resolve(0.26, 0.2, 24) == 55
    assert prompts_to_resolve(-0.03, 0.2, 24) is None and prompts_to_resolve(float("nan"), 0.2, 24) is None
    assert prompts_to_resolve(0.9, 0.01, 24) == 2


def _rec(o, k, gap, p, floor_low=0.2, **extra):
    return {
        "objective": o,
        "staleness": k,
        "groups": 24,
        "cosine": 0.5 + gap,
        "floor_joint": 0.5,
        "gap": gap,
        "gap_low": gap - 0.1,
        "gap_high": gap + 0.1,
        "gap_p": p,
        "noise_floor": 0.5,
        "noise_floor_low": floor_low,
        "noise_floor_se": 0.1,
        "floor_stale": 0.5,
        "floor_stale_low": 0.2,
        "floor_stale_se": 0.1,
        "cosine_disattenuated": 1 + 2 * gap,
        "cosine_disattenuated_low": 1 + 2 * gap - 0.2,
        "cosine_disattenuated_high": 1 + 2 * gap + 0.2,
        "cosine_pg": 0.3,
        "norm_ratio": 1.0,
        "ess": 0.5,
        **extra,
    }


def test_judge_and_reading_name_calibration_floors_and_where_each_objective_leaves_the_floor():
    """Holm within the K = 0 rows and within the K > 0 rows; the text quotes the judged numbers."""
    recs = judge(
        [
            _rec("x", 0, 0.0, 0.8),
            _rec("x", 4, -0.3, 0.01),  # Holm over the 4 K > 0 rows: 3 · 0.01 = 0.03 → below
            _rec("x", 16, -0.4, 0.004),  # 4 · 0.004 = 0.016 → below
            _rec("y", 0, 0.0, 0.8),  # K = 0: 2 · 0.8 → 1
            _rec("y", 4, -0.2, 0.02, floor_low=-0.1),  # 2 · 0.02 = 0.04 → below (its floor unresolved)
            _rec("y", 16, -0.1, 0.3),  # 0.3
        ]
    )
    by = {(r["objective"], r["staleness"]): r for r in recs}
    assert [by["x", 4]["gap_p_holm"], by["x", 16]["gap_p_holm"], by["y", 4]["gap_p_holm"]] == [
        pytest.approx(0.03),
        pytest.approx(0.016),
        pytest.approx(0.04),
    ]
    assert by["y", 16]["gap_p_holm"] == pytest.approx(0.3) and by["x", 0]["gap_p_holm"] == 1.0
    assert [by["x", 4]["below_floor"], by["y", 4]["below_floor"], by["y", 16]["below_floor"]] == [True, True, False]
    assert by["x", 0]["calibrated"] and by["y", 0]["calibrated"]
    assert by["x", 4]["floor_resolved"] and not by["y", 4]["floor_resolved"]
    assert by["x", 4]["prompts_to_resolve"] == math.ceil(24 * (1.959963984540054 * 0.1 / 0.5) ** 2) == 4
    assert calibration_lines(recs)[0].startswith("**calibrated**: at K = 0 no objective's gap is resolved away")
    leave = leave_lines(recs)
    assert leave[2] == (
        "- **x** leaves the floor at K = 4: gap -0.300 [-0.400, -0.200], adjusted p 0.03; disattenuated cosine "
        "0.400 [0.200, 0.600]; below it at K = 4, 16. At K = 16: cosine 0.100, joint floor 0.500, disattenuated "
        "0.200, to the reference 0.300, norm ratio 1.000, ESS/n 0.500."
    )
    assert leave[3].startswith("- **y** leaves the floor at K = 4") and "the floor is not resolved at K = 4" in leave[3]
    floors = floor_lines(recs)
    assert floors[0].startswith("The noise floor is **not resolved** in 1 of 6 rows")
    assert floors[2] == (
        "- y, K = 4: fresh floor 0.500: 24 · (1.960 · 0.100 / 0.500)² → 4; "
        "stale floor 0.500: 24 · (1.960 · 0.100 / 0.500)² → 4; both: **4 prompts**"
    )
    bad = judge([_rec("x", 0, -0.3, 0.001), _rec("x", 1, 0.0, 0.9)])
    assert calibration_lines(bad)[0].startswith("**the probe is not calibrated**: at K = 0")
    assert floor_lines(bad)[0].startswith("Every noise floor is resolved")


# --------------------------------------------------------------------------- command


@pytest.mark.parametrize(
    "args, message",
    [
        (["--age", "-1"], "error: --age -1: expected a non-negative"),
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


def test_age_is_the_flag_and_staleness_a_deprecated_hidden_alias(tmp_path, monkeypatch):
    """`--age/-K` is K; `--staleness` (compare's N) is not in the help, and still works with a one-line
    note before whatever follows."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["probe", "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "--age" in shown.output and "-K" in shown.output
    assert "--staleness" not in shown.output
    for flag in ("--staleness", "--age", "-K"):
        result = runner.invoke(app, ["probe", "--preset", "tiny", flag, "-2"], env={"COLUMNS": "300"})
        err = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and err[-1] == "error: --age -2: expected a non-negative number of optimizer steps"
        assert err[:-1] == (
            [
                "note: `vespo probe --staleness` is deprecated, use --age/-K (K optimizer steps since sampling; "
                "in `vespo compare`, --staleness is N)"
            ]
            if flag == "--staleness"
            else []
        )


@pytest.mark.slow
def test_quick_probe_on_tiny_end_to_end(tmp_path, monkeypatch):
    """`vespo probe --preset tiny --quick`: every objective at every K with finite figures and the judged
    keys (`cosine_disattenuated`, `floor_resolved`, ...); at K = 0 no drift, every objective's stale
    gradient is the same one (all reduce to REINFORCE), and the calibration check passes: D₀, D₀′, A and
    B are then four draws from θ₀, so no gap is resolved away from 0 and the report says "calibrated".
    The random tiny model earns no reward from the grader, so `--reward auto` probes with even-tokens.
    The heap is handed back once after each measured K."""
    from vespo_cli.probe import measure

    released = []
    monkeypatch.setattr(measure, "release_heap", lambda: released.append(len(list((out / "partial").glob("K*")))))
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
        assert set(REQUIRED) | set(JUDGED) <= set(r) and finite_record(r), r
        assert -1 <= r["cosine_low"] <= r["cosine"] <= r["cosine_high"] <= 1
        assert r["gap_low"] <= r["gap"] <= r["gap_high"] and isinstance(r["floor_resolved"], bool)
    k0 = [r for r in records if r["staleness"] == 0]
    assert {r["delta_abs_mean"] for r in k0} == {0.0} and {r["ess"] for r in k0} == {1.0}
    assert max(r["cosine"] for r in k0) - min(r["cosine"] for r in k0) < 1e-9
    assert all(r["calibrated"] and r["gap_p_holm"] >= 0.05 for r in k0), k0
    assert all(isinstance(r["below_floor"], bool) for r in records if r["staleness"] > 0)
    assert all(r["delta_abs_mean"] > 0 for r in records if r["staleness"] > 0)
    for name in ("report.md", "settings.json", "fidelity.png", "drift.png", "offpolicy.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Reading" in report and "## Noise floor" in report
    assert "\n**calibrated**: at K = 0 no objective's gap is resolved away from 0" in report
    assert json.loads((out / "settings.json").read_text())["reward"] == "even-tokens"
    assert released == [1, 2, 3, 4]  # after K = 0, 1, 2 and 4, each once its partial/K*.json is written


@pytest.mark.slow
def test_killed_probe_resumes_at_the_first_unmeasured_age(tmp_path, monkeypatch):
    """A probe killed at K = 2 while sketching draw B (its partial/K2.json gone, D₀, D₀′ and A kept in
    partial/K2/, θ_2 with its optimizer state in partial/walk/) and rerun with the same options starts the
    walk at the kept θ_2 (no on-policy step), checks the behaviour data against its fingerprint, sketches
    only B at θ_2 (beside the two θ₀ passes for the behaviour log-probs), writes the records the
    uninterrupted probe wrote and removes partial/K2/ and partial/walk/. Without a kept θ (or with a
    corrupt one) the walk starts again at θ₀ and a changed θ_1 is refused; other options start over."""
    from vespo_cli.probe import measure

    out = tmp_path / "probe"
    args = [
        "probe",
        "--preset",
        "tiny",
        "--quick",
        "--algo",
        "grpo",
        "--algo",
        "vespo",
        "-K",
        "0",
        "-K",
        "1",
        "-K",
        "2",
    ]
    first = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert first.exit_code == 0, first.output
    whole = json.loads((out / "probe.json").read_text())
    assert sorted(p.name for p in (out / "partial").iterdir()) == ["K0.json", "K1.json", "K2.json", "options.json"]
    (out / "partial" / "K2.json").unlink()
    put = measure.KeptSketches.put

    def killed_at_b(self, name, batch, computed):
        if self.path.name == "K2" and name == "b":
            raise KeyboardInterrupt
        return put(self, name, batch, computed)

    monkeypatch.setattr(measure.KeptSketches, "put", killed_at_b)
    killed = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert killed.exit_code != 0 and not (out / "partial" / "K2.json").exists()
    kept = sorted(p.name for p in (out / "partial" / "K2").iterdir())
    assert kept == ["a.safetensors", "redraw.safetensors", "stale.safetensors"]
    assert [p.name for p in (out / "partial" / "walk" / "checkpoints").iterdir()] == ["step-2"]
    monkeypatch.setattr(measure.KeptSketches, "put", put)
    passes, sketches = [], measure.batch_sketches
    monkeypatch.setattr(measure, "batch_sketches", lambda *a, **kw: passes.append(1) or sketches(*a, **kw))
    steps, on_policy_step = [], measure._on_policy_step
    monkeypatch.setattr(measure, "_on_policy_step", lambda *a: steps.append(a[3]) or on_policy_step(*a))
    again = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "resuming the probe: K = [0, 1] measured before" in again.output
    assert "resuming the walk at θ_2" in again.output and steps == []
    assert len(passes) == 3 and not (out / "partial" / "K2").exists()  # θ₀ on D₀ and D₀′, then B at θ_2
    assert not (out / "partial" / "walk").exists()  # every K measured
    resumed = json.loads((out / "probe.json").read_text())
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(resumed) == drop(whole)
    assert [r["seconds"] for r in resumed if r["staleness"] < 2] == [r["seconds"] for r in whole if r["staleness"] < 2]
    (out / "partial" / "K2.json").unlink()
    monkeypatch.setattr(measure.KeptSketches, "put", killed_at_b)  # killed again at K = 2, its θ_2 then torn
    assert CliRunner().invoke(app, [*args, "--out", str(out)]).exit_code != 0
    steps.clear()
    weights = out / "partial" / "walk" / "checkpoints" / "step-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    monkeypatch.setattr(measure.KeptSketches, "put", put)
    torn = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert torn.exit_code == 0 and "walking again from θ₀" in torn.output and steps == [0, 1]
    assert drop(json.loads((out / "probe.json").read_text())) == drop(whole)
    (out / "partial" / "K1.json").write_text(
        (out / "partial" / "K1.json")
        .read_text()
        .replace(json.loads((out / "partial" / "K1.json").read_text())["theta"], "0" * 16)
    )
    (out / "partial" / "K2.json").unlink()
    tampered = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert tampered.exit_code == 2 and "θ_1 reached again differs from the killed probe's" in tampered.output
    other = CliRunner().invoke(app, [*args, "-K", "3", "--out", str(out)])
    assert other.exit_code == 0 and "holds a probe with other options; starting over" in other.output


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
    missing = runner.invoke(app, ["probe", "--run", "run", "--age", "3"], env={"COLUMNS": "300"})
    assert missing.exit_code == 2
    assert missing.stderr.strip() == "error: --age 3: run has no checkpoints/step-3 (steps saved: 2)"
    result = runner.invoke(
        app,
        [
            "probe",
            "--run",
            "run",
            "--shards",
            "run/rollouts",
            "--age",
            "0",
            "-K",
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
