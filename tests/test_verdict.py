"""The verdict machinery: claims files, the tests each form uses, Holm, power — on exact values and on
simulated studies with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vespo_cli.compare import stats as S
from vespo_cli.compare.claims import Claim, ClaimsFile, load_claims
from vespo_cli.compare.markdown import verdict_sentence
from vespo_cli.compare.verdict import judge
from vespo_cli.errors import UserError


def group(label: str, n: int, values: dict, endpoint: str = "final_eval", collapsed: set | None = None) -> dict:
    """A group summary as write_report makes it, reduced to what the verdict reads."""
    return {
        "label": label,
        "staleness": n,
        "per_seed": [{"seed": s, endpoint: v} for s, v in sorted(values.items())],
        "collapse": [
            {"seed": s, "status": "collapsed" if s in (collapsed or set()) else "stable"} for s in sorted(values)
        ],
    }


def claims(*items: dict, **file) -> ClaimsFile:
    return ClaimsFile.model_validate({"family": "test", "claims": list(items), **file})


# ---------------------------------------------------------------------------- exact values


def test_holm_on_known_pvalues():
    # Holm (1979)'s procedure by hand: sorted 0.01, 0.02, 0.03, 0.04 × 4, 3, 2, 1, then the running maximum
    assert S.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert S.holm([0.5, None, 0.001]) == [pytest.approx(0.5), None, pytest.approx(0.002)]
    assert S.holm([0.9, 0.8]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1, then monotone
    assert S.holm([]) == []


def test_boschloo_and_newcombe_on_known_tables():
    # the most lopsided table n/n vs 0/n: only it (and its mirror) is as extreme; sup_π π^n (1 − π)^n = 4^-n at
    # π = ½, twice for two sides; Fisher's conditional test gives 2/C(2n, n) (0.1 at n = 3: never below 0.05)
    for n in range(1, 7):
        assert S.collapse_pvalue(0, n, n, n) == pytest.approx(2 * 4.0**-n, rel=1e-6)
        assert S.collapse_pvalues(n, n).min() == pytest.approx(2 * 4.0**-n, rel=1e-5)
    assert S.collapse_pvalue(3, 3, 3, 3) == pytest.approx(1.0) and S.collapse_pvalue(0, 5, 0, 5) == pytest.approx(1.0)
    # Newcombe (1998), method 10, example (a): 56/70 − 48/80 = 0.2 [0.0524, 0.3339]
    d = S.newcombe_interval(56, 70, 48, 80)
    assert (d["mean"], d["low"], d["high"]) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)


@pytest.mark.parametrize("n_a,n_b", [(3, 3), (4, 6), (5, 5)])
def test_boschloo_table_is_scipys_and_never_above_fishers(n_a, n_b):
    """The all-tables grid (for power) against scipy's test table by table, and Boschloo's defining property:
    each one-sided p is at most Fisher's (the sup over π of the mass of the tables Fisher's p orders below), so
    the two-sided p, twice the smaller one, is at most twice the smaller one-sided Fisher p."""
    from scipy.stats import fisher_exact

    table = S.collapse_pvalues(n_a, n_b)
    for k_a in range(n_a + 1):
        for k_b in range(n_b + 1):
            p = S.collapse_pvalue(k_a, n_a, k_b, n_b)
            assert table[k_a, k_b] == pytest.approx(p, rel=2e-5, abs=1e-12)
            counts = [[k_a, k_b], [n_a - k_a, n_b - k_b]]
            fisher = min(fisher_exact(counts, alternative=side).pvalue for side in ("less", "greater"))
            assert p <= min(1.0, 2 * fisher) * (1 + 1e-6)


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.0, 1.0), n=st.integers(2, 10), alpha=st.sampled_from([0.05, 0.01, 0.005]))
def test_collapse_test_keeps_its_level_at_every_common_rate(rate, n, alpha):
    """Exact: with equal collapse rates the probability of rejecting is at most α, whatever the rate."""
    assert S.collapse_power(rate, rate, n, alpha) <= alpha + 1e-9


def test_collapse_power_and_runs_on_closed_forms():
    # rates 0 vs 1: the outcome is the lopsided table, p = 2·4^-n; rejected exactly when 2·4^-n < α
    assert S.collapse_power(0.0, 1.0, 3, 0.05) == pytest.approx(1.0)  # 2/64 = 0.031
    assert S.collapse_power(0.0, 1.0, 3, 0.025) == pytest.approx(0.0)
    for alpha in (0.05, 0.025, 0.01, 0.005, 0.001):
        assert S.runs_to_resolve_at_best(alpha) == math.floor(math.log(2 / alpha, 4)) + 1
    assert S.runs_to_resolve(0.0, 1.0, 0.005) == 5 and S.runs_to_resolve(0.3, 0.3) is None


def test_paired_contrast_and_t_test_by_hand():
    # per-seed interaction [a(N) − a(1)] − [b(N) − b(1)]: 0.1, 0.2, 0.3 → mean 0.2, s = 0.1, se = 0.1/√3
    a1, an = {0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.4, 1: 0.5, 2: 0.6}
    b1, bn = {0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.3, 1: 0.3, 2: 0.3}
    d = S.contrast([(1, an), (-1, a1), (-1, bn), (1, b1)])
    se = 0.1 / math.sqrt(3)
    assert d["method"] == "paired" and d["n"] == 3 and d["df"] == 2
    assert (d["mean"], d["se"]) == pytest.approx((0.2, se))
    assert d["high"] - d["mean"] == pytest.approx(S.t_quantile(0.975, 2) * se)
    assert S.t_test(0.2, se, 2) == pytest.approx(2 * (1 - S.t_cdf(0.2 / se, 2)))
    # seeds that do not pair: Welch–Satterthwaite over the cells
    w = S.contrast([(1, {0: 1.0, 1: 2.0, 2: 3.0}), (-1, {5: 0.0, 6: 1.0})])
    assert w["method"] == "welch" and w["mean"] == pytest.approx(1.5)
    assert w["se"] == pytest.approx(math.sqrt(1 / 3 + 0.5 / 2))


def test_power_matches_its_limits():
    assert S.t_power(0.0, 4) == pytest.approx(0.05, abs=1e-3)  # no effect: the test's own level
    assert S.detectable_ncp(10_000) == pytest.approx(1.959964 + 0.841621, abs=2e-3)  # z_{.975} + z_{.8}
    assert S.seeds_to_resolve(0.0, 1.0) is None and S.seeds_to_resolve(1e-4, 1.0) is None  # > MAX_SEEDS


# ---------------------------------------------------------------------------- simulated studies


def _studies(rng, n_studies: int, n: int, true: float, sd: float) -> np.ndarray:
    """Per-seed paired differences of many simulated studies: seed effects cancel in the pairing."""
    seed_effect = rng.normal(0, 0.2, (n_studies, n))
    return (seed_effect + true + rng.normal(0, sd, (n_studies, n))) - seed_effect


def _supported_rate(diffs: np.ndarray, boundary: float) -> tuple[float, float]:
    """(coverage of the true mean is checked by the caller) fraction supported: p < 0.05 with mean > boundary."""
    n = diffs.shape[1]
    m, s = diffs.mean(1), diffs.std(1, ddof=1)
    se = s / math.sqrt(n)
    crit = S.t_quantile(0.975, n - 1)
    return float(np.mean((m - boundary) / se > crit)), float(np.mean((m - boundary) / se < -crit))


def test_noninferior_rule_coverage_and_power_on_simulated_studies():
    rng = np.random.default_rng(0)
    n, sd, margin, reps = 5, 0.1, 0.05, 4000
    se = sd / math.sqrt(n)
    # coverage of the paired t interval that the rule reads: ≈ 95%
    diffs = _studies(rng, reps, n, -0.02, sd)
    covered = 0
    for row in diffs[:800]:
        d = S.contrast([(1, dict(enumerate(row))), (0, dict(enumerate(np.zeros(n))))])
        covered += d["low"] <= -0.02 <= d["high"]
    assert covered / 800 == pytest.approx(0.95, abs=0.025)
    # a true effect exactly at the boundary is supported at the test's one-sided level (2.5%), not more
    sup, _ = _supported_rate(_studies(rng, reps, n, -margin, sd), -margin)
    assert sup == pytest.approx(0.025, abs=0.012)
    # a true effect the test detects half the time: supported ≈ 50% (the old rule said "supported" ~never)
    half = -margin + S.detectable_ncp(n - 1, power=0.5) * se
    sup, _ = _supported_rate(_studies(rng, reps, n, half, sd), -margin)
    assert sup == pytest.approx(0.5, abs=0.04)
    # at the minimum detectable effect (80% power): supported ≈ 80%
    mde = S.detectable_ncp(n - 1) * se
    sup, _ = _supported_rate(_studies(rng, reps, n, -margin + mde, sd), -margin)
    assert sup == pytest.approx(0.8, abs=0.03)
    # a method with no loss at all: supported at the test's power for margin/se, contradicted almost never
    sup, con = _supported_rate(_studies(rng, reps, n, 0.0, sd), -margin)
    assert sup == pytest.approx(S.t_power(margin / se, n - 1), abs=0.03) and con < 0.005


def test_interaction_coverage_on_simulated_seeds():
    """Four cells sharing seed effects (paired); the interaction's interval covers the truth ≈ 95%."""
    rng = np.random.default_rng(1)
    n, true, hits, reps = 4, 0.1, 0, 1000
    for _ in range(reps):
        seed = rng.normal(0, 0.3, n)
        cells = {
            "a1": 0.8 + seed + rng.normal(0, 0.05, n),
            "an": 0.7 + seed + rng.normal(0, 0.05, n),
            "b1": 0.8 + seed + rng.normal(0, 0.05, n),
            "bn": 0.6 + seed + rng.normal(0, 0.05, n),
        }
        d = S.contrast([(w, dict(enumerate(cells[k]))) for w, k in ((1, "an"), (-1, "a1"), (-1, "bn"), (1, "b1"))])
        hits += d["low"] <= true <= d["high"]
    assert hits / reps == pytest.approx(0.95, abs=0.02)


def test_mde_against_simulation():
    rng = np.random.default_rng(2)
    for n in (3, 8):
        ncp = S.detectable_ncp(n - 1, alpha=0.01)
        x = rng.normal(ncp / math.sqrt(n), 1.0, (20_000, n))
        t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
        assert np.mean(np.abs(t) > S.t_quantile(0.995, n - 1)) == pytest.approx(0.8, abs=0.012)
    # seeds_to_resolve: the smallest n whose power reaches 80%
    n = S.seeds_to_resolve(0.1, 0.1, alpha=0.05)
    assert S.t_power(math.sqrt(n), n - 1) >= 0.8 > S.t_power(math.sqrt(n - 1), n - 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1e-2), min_size=1, max_size=12))
def test_holm_is_monotone_and_dominates_raw(ps):
    adj = S.holm(ps)
    assert all(a >= p for a, p in zip(adj, ps))
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    assert all(adj[order[i]] <= adj[order[i + 1]] for i in range(len(ps) - 1))


# ---------------------------------------------------------------------------- the verdict


def test_verdict_forms_come_out_every_way():
    groups = [
        group("vespo", 1, {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.81}),
        group("vespo", 16, {0: 0.78, 1: 0.80, 2: 0.77, 3: 0.80}),  # keeps ~98%: noninferior at 11.7%
        group("grpo", 1, {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.81}),
        group("grpo", 16, {0: 0.40, 1: 0.45, 2: 0.41, 3: 0.42}, collapsed={0, 1, 2, 3}),
        group("sapo", 1, {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.81}),
        group("sapo", 16, {0: 0.81, 1: 0.82, 2: 0.80, 3: 0.82}),
    ]
    c = claims(
        {"claim": "stable", "form": "noninferior", "a": "vespo", "margin_relative": 0.117},
        {"claim": "grpo degrades", "form": "degrades", "a": "grpo", "margin_relative": 0.117},
        {"claim": "beats grpo", "form": "interaction", "a": "vespo", "b": "grpo"},
        {"claim": "beats sapo", "form": "interaction", "a": "vespo", "b": "sapo"},
        {"claim": "collapses less", "form": "collapse", "a": "vespo", "b": "grpo"},
        {"claim": "absent", "form": "difference", "a": "vespo", "b": "cispo"},
    )
    rows = {r["claim"]: r for r in judge(groups, c)}
    assert rows["stable"]["verdict"] == "supported"
    assert rows["stable"]["margin"] == pytest.approx(0.117 * 0.8025)  # relative: δ × the reference mean
    assert rows["grpo degrades"]["verdict"] == "supported"
    assert rows["beats grpo"]["verdict"] == "supported" and rows["beats grpo"]["method"] == "paired"
    assert rows["beats sapo"]["verdict"] == "contradicted"  # sapo lost nothing, vespo lost ~2 points
    assert rows["collapses less"]["counts"] == [0, 4] and rows["collapses less"]["p"] == pytest.approx(2 / 4**4)
    assert rows["collapses less"]["verdict"] == "supported"  # Fisher's 2/70 would leave it unresolved at Holm's level
    assert rows["absent"]["verdict"] == "no data" and rows["absent"]["p"] is None
    p = [r["p"] for r in rows.values()]
    assert [r["p_adjusted"] for r in rows.values()] == S.holm(p)  # one family over the rows with data
    for r in rows.values():  # the interface the checks rely on
        assert {"claim", "form", "margin", "estimate", "low", "high", "p", "p_adjusted", "mde", "verdict"} <= set(r)
    assert "p = " in verdict_sentence(rows["stable"]) and "Holm p = " in verdict_sentence(rows["stable"])


def test_unresolved_rows_say_what_would_resolve_them():
    groups = [
        group("vespo", 1, {0: 0.6, 1: 0.7, 2: 0.5}),
        group("vespo", 16, {0: 0.55, 1: 0.62, 2: 0.52}),
        group("grpo", 1, {0: 0.6, 1: 0.7, 2: 0.5}),
        group("grpo", 16, {0: 0.50, 1: 0.66, 2: 0.43}),
    ]
    (row,) = judge(groups, claims({"claim": "x", "form": "interaction", "a": "vespo", "b": "grpo"}))
    assert row["verdict"] == "not resolved"
    assert row["mde"] > abs(row["estimate"])  # what the test could detect at n = 3 exceeds what was seen
    assert row["seeds_needed"] > 3
    sd = row["sd"]
    assert row["seeds_needed"] == S.seeds_to_resolve(row["estimate"], sd, alpha=0.05)
    # one seed: no interval, no p, so not resolved (and not in the family)
    one = judge(
        [group("vespo", 1, {0: 0.5}), group("vespo", 4, {0: 0.1})],
        claims({"claim": "s", "form": "noninferior", "a": "vespo"}),
    )
    assert one[0]["verdict"] == "not resolved" and one[0]["p"] is None and one[0]["low"] is None


def test_collapse_row_says_when_no_outcome_can_resolve_it():
    """Counts of a few runs give only a few p-values: at 3 runs per arm the most lopsided outcome gives 2·4⁻³ =
    0.031, below α = 0.05 for a family of one, but not below Holm's α/2 for a family of two; the row says so and
    how many runs per arm would do (4: 2·4⁻⁴ = 0.0078), unless the plan is that many."""
    groups = [
        group("vespo", 32, {0: 0.5, 1: 0.5, 2: 0.5}),
        group("grpo", 32, {0: 0.1, 1: 0.2, 2: 0.1}, collapsed={0, 1}),
    ]
    collapse = {"claim": "fewer", "form": "collapse", "a": "vespo", "b": "grpo"}
    (alone,) = judge(groups, claims(collapse))
    assert alone["best_p"] == pytest.approx(2 / 64, rel=1e-5) and "cannot come out" not in alone["note"]
    two = {
        r["claim"]: r
        for r in judge(groups, claims(collapse, {"claim": "d", "form": "difference", "a": "vespo", "b": "grpo"}))
    }
    note = two["fewer"]["note"]
    assert "cannot come out either way at 3 and 3 runs per arm" in note and "p = 0.031" in note
    assert "4 runs per arm can" in note and two["fewer"]["verdict"] == "not resolved"
    planned = {
        r["claim"]: r
        for r in judge(
            groups, claims(collapse, {"claim": "d", "form": "difference", "a": "vespo", "b": "grpo"}), {32: 4}
        )
    }
    assert planned["fewer"]["verdict"] == "interim" and "cannot come out" not in planned["fewer"]["note"]
    assert planned["fewer"]["best_p"] == pytest.approx(2 / 4**4, rel=1e-5)  # judged at the plan's 4 runs per arm
    # before any run: a claim at one listed N with a plan there is checked from the plan alone (family of 10)
    before = claims(*({**collapse, "claim": f"c{i}", "at": [32]} for i in range(10)), planned_seeds={32: 3})
    rows = judge([group("vespo", 16, {0: 0.5})], before)
    assert {r["verdict"] for r in rows} == {"no data"} and rows[0]["best_p"] == pytest.approx(2 / 64, rel=1e-5)
    assert (
        "cannot come out either way at 3 and 3 runs per arm" in rows[0]["note"]
        and "5 runs per arm can" in rows[0]["note"]
    )
    five = judge([group("vespo", 16, {0: 0.5})], before, {32: 5})
    assert five[0]["best_p"] == pytest.approx(2 / 4**5, rel=1e-5) and "cannot come out" not in five[0]["note"]


def test_planned_rows_without_data_stay_in_the_family():
    """Holm over the planned family, not over the rows that have data so far: a row the plan promises data for
    (its claim lists its N, each planned) counts at p = 1 until it has data. Here one difference has p ≈ 0.015
    at its planned 4 seeds: alone in the family it is supported (Holm p = p), but with 9 more planned rows it
    is not yet (Holm p = 10 p > 0.05), so it is interim, not judged in a smaller family than the plan's."""
    groups = [
        group("vespo", 16, {0: 0.50, 1: 0.52, 2: 0.49, 3: 0.51}),
        group("grpo", 16, {0: 0.47, 1: 0.51, 2: 0.46, 3: 0.48}),
    ]
    first = {"claim": "better", "form": "difference", "a": "vespo", "b": "grpo", "at": [16]}
    later = [{"claim": f"stress {i}", "form": "difference", "a": "vespo", "b": "grpo", "at": [32]} for i in range(9)]
    (alone,) = judge(groups, claims(first), {16: 4})
    assert alone["verdict"] == "supported" and alone["p_adjusted"] == pytest.approx(alone["p"])
    rows = judge(groups, claims(first, *later), {16: 4, 32: 4})
    assert rows[0]["p_adjusted"] == pytest.approx(min(1.0, 10 * rows[0]["p"])) and rows[0]["p_adjusted"] > 0.05
    assert rows[0]["verdict"] == "interim" and "9 planned row(s) of the family have no data yet" in rows[0]["note"]
    assert all(r["pending"] and r["p_adjusted"] is None and r["verdict"] == "no data" for r in rows[1:])
    unplanned = judge(groups, claims(first, *later), {16: 4})  # N = 32 not in the plan: the family is the data's
    assert unplanned[0]["verdict"] == "supported" and not any(r["pending"] for r in unplanned)
    never_run = [{**c, "b": "gspo"} for c in later]  # an arm the study never runs promises no data
    assert judge(groups, claims(first, *never_run), {16: 4, 32: 4})[0]["verdict"] == "supported"


def test_claims_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("family: f\nclaims:\n  - {claim: x, form: interaction, a: vespo}\n")
    with pytest.raises(UserError, match=r"c\.yaml: .*baseline `b`"):
        load_claims(str(bad))
    bad.write_text("family: f\nclaims:\n  - {claim: x, form: sideways, a: vespo}\n")
    with pytest.raises(UserError, match=r"c\.yaml: claims\[0\]\.form: expected one of"):
        load_claims(str(bad))
    with pytest.raises(UserError, match="unknown claims file"):
        load_claims("no-such-claims")
    paper, path = load_claims()  # the default: the paper's claims, every form represented
    assert path.name == "vespo-paper.yaml" and {c.form for c in paper.claims} == {
        "noninferior",
        "degrades",
        "interaction",
        "difference",
        "collapse",
    }
    assert Claim(claim="x", form="difference", a="a", b="b").at == "highest"


def test_eval_overlap_names_in_sample_evals():
    from vespo_cli.compare.overlap import eval_overlap

    config = {"data": {"train": "arith", "difficulty": 1}, "trainer": {"steps": 32, "minibatch_prompts": 4, "seed": 0}}
    legacy = {"benchmark": "arith", "num_problems": 64}  # an eval line from before the held-out split
    assert eval_overlap(config, legacy) == {
        "problems": 64,
        "in_training": 64,  # seed 0's eval set was its own first 64 training prompts
        "distinct": 37,
        "split": "training stream (before the held-out split)",
    }
    mixed = {**config, "data": {"train": "arith", "difficulty": [1, 2]}}
    held = {"benchmark": "arith", "num_problems": 640, "split": "held-out", "difficulty": [1, 2]}
    assert eval_overlap(mixed, held)["in_training"] == 0
    assert eval_overlap({"data": {"train": "gsm8k"}}, held) is None


def test_eval_auc_is_the_mean_accuracy_over_samples():
    from vespo_cli.compare.analysis import eval_auc, eval_curve

    records = [{"kind": "train", "step": s, "n_seqs": 32, "reward": 0.5} for s in range(1, 5)]
    records += [
        {"kind": "eval", "benchmark": "arith", "step": 2, "avg_at_k": 0.2},
        {"kind": "eval", "benchmark": "arith", "step": 4, "avg_at_k": 0.6},
    ]
    curve = eval_curve(records)
    assert [(c["step"], c["samples"], c["accuracy"]) for c in curve] == [(2, 64.0, 0.2), (4, 128.0, 0.6)]
    assert eval_auc(curve) == pytest.approx(0.4)  # trapezoid over [64, 128] / 64
    assert eval_auc(curve[:1]) is None


# ---------------------------------------------------------------------------- planned seeds (no early looks)


def test_rows_short_of_the_planned_seeds_are_interim_then_judged_at_the_plan():
    """A row that would be supported at 2 of 4 planned seeds is interim; at 4 seeds it is judged as usual."""
    from vespo_cli.compare.claims import parse_planned_seeds

    c = claims({"claim": "beats", "form": "difference", "a": "vespo", "b": "grpo", "at": [16]}, planned_seeds=4)
    two = [group("vespo", 16, {0: 0.60, 1: 0.61}), group("grpo", 16, {0: 0.40, 1: 0.405})]
    (row,) = judge(two, c)
    assert row["p"] < 0.05 and row["estimate"] > 0  # alone in its family: would be supported without the plan
    assert row["p_adjusted"] is None  # short of the plan: in the family at p = 1
    assert row["verdict"] == "interim" and "vespo N=16: 2 of 4 seeds" in row["note"]
    assert row["seeds_needed"] is not None and "interim" in verdict_sentence(row)
    assert judge(two, c, planned={16: 2})[0]["verdict"] == "supported"  # the plan given per N overrides
    assert judge(two, claims(*c.claims and [c.claims[0].model_dump()]))[0]["verdict"] == "supported"  # no plan
    four = [
        group("vespo", 16, {0: 0.60, 1: 0.61, 2: 0.59, 3: 0.62}),
        group("grpo", 16, {0: 0.40, 1: 0.405, 2: 0.41, 3: 0.39}),
    ]
    (row,) = judge(four, c)
    assert row["verdict"] == "supported" and row["seeds_needed"] is None
    # per N: the plan at N = 32 is 3; a group at an N the plan does not name is judged as it stands
    stress = [group("vespo", 32, {0: 0.6, 1: 0.61, 2: 0.62}), group("grpo", 32, {0: 0.4, 1: 0.42, 2: 0.41})]
    c32 = claims({"claim": "s", "form": "difference", "a": "vespo", "b": "grpo"}, planned_seeds={16: 4, 32: 3})
    assert judge(stress, c32)[0]["verdict"] == "supported"
    assert judge(stress, c32, planned=parse_planned_seeds(["32=4"]))[0]["verdict"] == "interim"
    assert judge(stress, claims(c32.claims[0].model_dump(), planned_seeds={1: 4}))[0]["verdict"] == "supported"
    # no data stays no data whatever the plan
    assert judge([group("vespo", 16, {0: 0.5})], c)[0]["verdict"] == "no data"


def test_planned_seeds_parse_and_validate(tmp_path):
    from vespo_cli.compare.claims import parse_planned_seeds

    assert parse_planned_seeds(["4", "32=3"]) == {None: 4, 32: 3}
    assert parse_planned_seeds([]) == {}
    for bad in ("x", "16=", "0", "16=0", "a=3"):
        with pytest.raises(UserError, match=rf"--planned-seeds {bad}: "):
            parse_planned_seeds([bad])
    bad = tmp_path / "c.yaml"
    for plan in ("0", "{16: 0}", "{0: 4}", "many"):
        bad.write_text(f"family: f\nplanned_seeds: {plan}\nclaims:\n  - {{claim: x, form: degrades, a: v}}\n")
        with pytest.raises(UserError, match=r"c\.yaml: planned_seeds"):
            load_claims(str(bad))
    assert claims({"claim": "x", "form": "degrades", "a": "v"}, planned_seeds={1: 4}).planned() == {1: 4}


def test_rows_short_of_the_planned_seeds_count_at_p_1_in_the_family():
    """A complete row is judged in a family where every row short of its planned seeds counts at p = 1 (its p still
    moves, and Holm's adjusted p of the others rises with it): with one short row beside it, a row at p ≈ 0.004
    has Holm p = 2p; supported when 2p < 0.05 whatever the short row later shows, interim while 2p is not."""
    full = [
        group("vespo", 16, {0: 0.60, 1: 0.61, 2: 0.59, 3: 0.62}),
        group("grpo", 16, {0: 0.40, 1: 0.405, 2: 0.41, 3: 0.39}),
        group("vespo", 32, {0: 0.60, 1: 0.62}),
        group("grpo", 32, {0: 0.40, 1: 0.45}),
    ]
    main = {"claim": "beats", "form": "difference", "a": "vespo", "b": "grpo", "at": [16]}
    stress = {"claim": "stress", "form": "difference", "a": "vespo", "b": "grpo", "at": [32]}
    rows = judge(full, claims(main, stress, planned_seeds=4))
    assert rows[1]["short"] and rows[1]["p_adjusted"] is None and rows[1]["verdict"] == "interim"
    assert rows[0]["p_adjusted"] == pytest.approx(min(1.0, 2 * rows[0]["p"]))
    assert rows[0]["verdict"] == "supported"  # 2p < 0.05: no later p of the short row can undo it
    weak = [
        group("vespo", 16, {0: 0.50, 1: 0.53, 2: 0.49, 3: 0.52}),
        group("grpo", 16, {0: 0.47, 1: 0.525, 2: 0.46, 3: 0.50}),
    ]
    (alone,) = judge(weak, claims(main, planned_seeds=4))
    rows = judge([*weak, *full[2:]], claims(main, stress, planned_seeds=4))
    assert alone["verdict"] == "supported" and 0.025 < alone["p"] < 0.05  # beside the short row: Holm p = 2p > 0.05
    assert (
        rows[0]["verdict"] == "interim"
        and "1 row(s) of the family are short of their planned seeds (counted at p = 1)" in rows[0]["note"]
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8))
def test_a_cut_interval_lies_in_both_the_raw_interval_and_the_range(values):
    """Cutting a t interval to a rate's [0, 1] keeps the mean (a mean of rates is in [0, 1]) and only ever narrows."""
    raw, cut = S.t_interval(values), S.t_interval(values, bounds=(0.0, 1.0))
    assert cut["mean"] == raw["mean"] and cut["n"] == raw["n"]
    assert max(raw["low"], 0.0) == cut["low"] <= cut["mean"] + 1e-12
    assert min(raw["high"], 1.0) == cut["high"] >= cut["mean"] - 1e-12
