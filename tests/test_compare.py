"""`vespo compare`: collapse detection, report generation, reuse/resume of runs, end to end on `tiny`."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from vespo_cli import compare as K
from vespo_cli import presets as P
from vespo_cli.config import load_config, save_config
from vespo_cli.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """The shipped presets; stand-in vespo/grpo algorithm presets where those are not shipped (yet)."""
    real = P.PRESETS_DIR
    if all((real / "algorithms" / f"{a}.yaml").is_file() for a in ("vespo", "grpo")):
        return real
    root = tmp_path / "presets"
    shutil.copytree(real, root)
    (root / "algorithms").mkdir(exist_ok=True)
    for a in ("vespo", "grpo"):
        p = root / "algorithms" / f"{a}.yaml"
        if not p.exists():
            p.write_text(f"description: test stand-in\nobjective: {a}\n")
    monkeypatch.setattr(P, "PRESETS_DIR", root)
    return root


def rec(step: int, reward: float, **kw) -> dict:
    base = {"kind": "train", "step": step, "reward": reward, "accuracy": reward, "loss": -0.1, "grad_norm": 0.5}
    return {**base, **kw}


def curve(rewards, **kw) -> list[dict]:
    return [rec(i + 1, float(r), **kw) for i, r in enumerate(rewards)]


# --------------------------------------------------------------------------- pure functions


def test_moving_average_is_trailing_and_skips_nonfinite():
    np.testing.assert_allclose(K.moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(K.moving_average([1, float("nan"), 3, None], 2), [1, 1, 3, 3])
    assert math.isnan(K.moving_average([float("nan")], 3)[0])
    assert K.smooth_window(2) == 2 and K.smooth_window(20) == 3 and K.smooth_window(1500) == 75
    assert K.default_patience(10) == 3 and K.default_patience(1500) == 150


def test_collapse_stable():
    r = np.minimum(np.arange(100) / 40, 0.8)
    out = K.detect_collapse(curve(r))
    assert out["status"] == "stable" and out["step"] is None
    assert out["best_reward"] == pytest.approx(0.8) and (out["window"], out["patience"]) == (5, 10)


def test_collapse_reward_drop_exact_step():
    # 0.8 for steps 1..60, then 0: MA(5) at step 61 = 0.64, 62 = 0.48, 63 = 0.32 < 0.5·0.8 → streak from 63
    out = K.detect_collapse(curve([0.8] * 60 + [0.0] * 40))
    assert (out["status"], out["step"], out["reason"]) == ("collapsed", 63, "reward drop")
    # the same drop, but the run ends before M = 10 steps of it: not (yet) collapsed
    assert K.detect_collapse(curve([0.8] * 60 + [0.0] * 9), total_steps=100)["status"] == "stable"
    # stricter knobs are honoured
    assert K.detect_collapse(curve([0.8] * 60 + [0.5] * 40), drop=0.9)["step"] == 62  # MA 0.74, 0.68 < 0.72


def test_collapse_nonfinite_loss_or_grad():
    rows = curve([0.5] * 50)
    rows[36]["loss"] = float("nan")
    out = K.detect_collapse(rows)
    assert (out["status"], out["step"], out["reason"]) == ("collapsed", 37, "non-finite loss")
    rows[19]["grad_norm"] = float("inf")
    assert K.detect_collapse(rows)["step"] == 20
    # NaN as written by json.dumps and read back
    rows = [json.loads(json.dumps(r)) for r in curve([0.0] * 10)]
    rows[4]["grad_norm"] = json.loads("NaN")
    assert K.detect_collapse(rows)["reason"] == "non-finite grad_norm"  # even in a run that never learned
    rows = curve([0.5] * 10)
    rows[2]["skipped_nonfinite"] = 1
    assert K.detect_collapse(rows)["step"] == 3


def test_collapse_never_learned_is_not_collapse():
    assert K.detect_collapse(curve([0.0] * 100))["status"] == "never learned"
    # tiny early reward that vanishes stays below the floor: never learned, not collapsed
    assert K.detect_collapse(curve([0.04] * 20 + [0.0] * 80))["status"] == "never learned"
    assert K.detect_collapse([])["status"] == "no data"
    assert K.detect_collapse([{"kind": "eval", "step": 3, "benchmark": "x"}])["status"] == "no data"


def test_collapse_noisy_but_stable():
    rng = np.random.default_rng(0)
    r = rng.binomial(16, 0.5, size=300) / 16  # a noisy plateau at 0.5
    r[::37] = 0.0  # with single-step dips to zero
    out = K.detect_collapse(curve(r))
    assert out["status"] == "stable"
    # the same noise after a real drop is a collapse
    r2 = np.concatenate([r[:150], rng.binomial(16, 0.1, size=150) / 16])
    assert K.detect_collapse(curve(r2))["status"] == "collapsed"


def test_collapse_drop_within_sampling_noise_is_not_collapse():
    # 16 samples per step: a lucky first step (5/16) then 1–2/16 is a 0.2 "drop" of a 1-step
    # window (SE 0.12) against a 3-step one (SE 0.04): < 3 SE, so not a collapse (reports/cpu-staleness)
    r = [5 / 16] + [2 / 16, 1 / 16, 2 / 16, 1 / 16, 2 / 16] * 4
    assert K.detect_collapse(curve(r), noise_z=0.0)["status"] == "collapsed"  # the old rule
    assert K.detect_collapse(curve(r, n_seqs=16))["status"] == "stable"
    # a real drop at the same sample size is still caught, at the same step as without the noise test
    drop = [0.8] * 60 + [0.1] * 40
    assert K.detect_collapse(curve(drop, n_seqs=16))["step"] == K.detect_collapse(curve(drop))["step"] == 63
    # the standard error: Bhatia–Davis bound μ(1 − μ) over Σ n_seqs of the window
    se = K.window_stderr(np.array([0.5, 0.5]), curve([0.5, 0.5], n_seqs=4), 2)
    np.testing.assert_allclose(se, [0.25, 0.5 / math.sqrt(8)])
    assert K.window_stderr(np.array([2.0]), curve([2.0], n_seqs=4), 1) is None  # reward outside [0, 1]
    assert K.window_stderr(np.array([0.5]), curve([0.5]), 1) is None  # no sample counts


def test_summarize_run_numbers():
    rows = curve([0.0] * 10 + [1.0] * 10, ess=0.5, clip_frac=0.2, train_s=1.0, rollout_s=0.5)
    rows.append(
        {
            "kind": "eval",
            "step": 20,
            "benchmark": "aime24",
            "k": 4,
            "avg_at_k": 0.25,
            "pass_at_k": 0.5,
            "ci95_low": 0.1,
            "ci95_high": 0.4,
        }
    )
    s = K.summarize_run(rows, total_steps=20)
    assert s["final_reward"] == 1.0 and s["best_reward"] == 1.0 and s["steps_done"] == 20
    assert s["ess_mean"] == 0.5 and s["weight_metric"] == "clip_frac" and s["weight_frac_mean"] == pytest.approx(0.2)
    assert s["time_s"] == pytest.approx(30.0)
    assert s["eval"]["aime24"]["avg_at_k"] == 0.25 and s["eval"]["aime24"]["k"] == 4
    # a resumed run's repeated step counts once (last line wins); vespo's suppressed_frac is preferred
    rows = curve([0.2, 0.4], suppressed_frac=0.1, clip_frac=0.0) + [rec(2, 0.6, suppressed_frac=0.3)]
    s = K.summarize_run(rows)
    assert s["steps_done"] == 2 and s["final_reward"] == 0.6 and s["weight_metric"] == "suppressed_frac"
    assert s["weight_frac_mean"] == pytest.approx(0.2)


def test_parse_algo_item(presets):
    assert K.parse_algo_item("vespo") == ("vespo", [], "vespo")
    assert K.parse_algo_item("vespo:length_norm=sqrt") == (
        "vespo",
        ["algorithm.params.length_norm=sqrt"],
        "vespo+length_norm=sqrt",
    )
    name, ov, label = K.parse_algo_item("vespo:length_norm=linear,correction=tis,trainer.lr=1e-5")
    assert ov == ["algorithm.params.length_norm=linear", "algorithm.correction=tis", "trainer.lr=1e-5"]
    assert label == "vespo+length_norm=linear+correction=tis+trainer.lr=1e-5"
    with pytest.raises(UserError, match="unknown algorithm preset"):
        K.parse_algo_item("nosuchalgo")
    with pytest.raises(UserError, match="key=value"):
        K.parse_algo_item("vespo:length_norm")


# --------------------------------------------------------------------------- statistics over seeds

T975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 10: 2.228138852, 30: 2.042272456}  # t_{0.975, df}


def test_t_quantiles():
    try:
        from scipy import stats as sps
    except ImportError:
        sps = None
    for df, want in T975.items():
        assert K.t_quantile(0.975, df) == pytest.approx(want, abs=1e-8)
        assert K.t_quantile(0.025, df) == pytest.approx(-want, abs=1e-8)
    if sps is not None:
        for df in (1, 1.5, 2, 3.7, 4, 9, 60, 500):
            for q in (0.6, 0.9, 0.975, 0.995):
                assert K.t_quantile(q, df) == pytest.approx(sps.t.ppf(q, df), rel=1e-9)
    # closed forms of the CDF: df = 1 (Cauchy) and df = 2, also at non-integer t
    for t in (-7.5, -1.0, 0.0, 0.3, 2.0, 40.0):
        assert K.stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert K.stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    with pytest.raises(ValueError):
        K.t_quantile(1.0, 3)


def test_t_interval_exact():
    out = K.t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1
    half = T975[2] / math.sqrt(3)
    assert out["n"] == 3 and out["mean"] == pytest.approx(2.0)
    assert (out["low"], out["high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert K.t_interval([0.4, None, float("nan")]) == {"mean": 0.4, "low": None, "high": None, "n": 1}  # one seed
    assert K.t_interval([None]) is None


def test_intervals_cut_to_bounds():
    """An interval is intersected with the values its quantity can take: a rate's [0, 1], a difference's [−1, 1]."""
    raw = K.t_interval([0.0, 0.1, 0.9])  # mean 1/3, s ≈ 0.493: the t interval leaves [0, 1] on both sides
    assert raw["low"] < 0 < 1 < raw["high"]
    cut = K.t_interval([0.0, 0.1, 0.9], bounds=(0.0, 1.0))
    assert cut == {"mean": pytest.approx(1 / 3), "low": 0.0, "high": 1.0, "n": 3}
    inside = K.t_interval([1.0, 2.0, 3.0], bounds=(-10.0, 10.0))  # an interval inside the bounds is unchanged
    assert (inside["low"], inside["high"]) == (
        K.t_interval([1.0, 2.0, 3.0])["low"],
        K.t_interval([1.0, 2.0, 3.0])["high"],
    )
    paired = K.difference({0: 0.9, 1: 0.0}, {0: 0.0, 1: 0.0}, bounds=(-1.0, 1.0))  # differences 0.9, 0: ±12.7·0.45
    assert (paired["low"], paired["high"]) == (-1.0, 1.0) and paired["mean"] == pytest.approx(0.45)
    welch = K.difference({0: 0.9, 1: 0.0}, {2: 0.5, 3: 0.6}, bounds=(-1.0, 1.0))
    assert welch["method"] == "welch" and (welch["low"], welch["high"]) == (-1.0, 1.0)


def test_wilson_interval():
    z2 = 1.959963984540054**2
    assert K.wilson_interval(0, 3) == {"mean": 0.0, "low": 0.0, "high": pytest.approx(z2 / (3 + z2)), "n": 3}
    full = K.wilson_interval(5, 5)
    assert full["high"] == 1.0 and full["low"] == pytest.approx(5 / (5 + z2))
    mid = K.wilson_interval(3, 10)  # the textbook example
    assert (round(mid["low"], 4), round(mid["high"], 4)) == (0.1078, 0.6032)
    assert K.wilson_interval(0, 0) is None
    assert K.collapse_rate(["collapsed", "stable", "never learned", "no data"]) == K.wilson_interval(1, 3)


def test_paired_difference_exact():
    a, b = {0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.3, 1: 0.4, 2: 0.5}  # per-seed differences 0.2, 0.3, 0.1: s = 0.1
    d = K.difference(a, b)
    half = T975[2] * 0.1 / math.sqrt(3)
    assert (d["method"], d["n"], d["seeds"]) == ("paired", 3, [0, 1, 2])
    assert (d["mean"], d["low"], d["high"]) == (
        pytest.approx(0.2),
        pytest.approx(0.2 - half),
        pytest.approx(0.2 + half),
    )
    # seeds that do not pair: Welch; equal n and variances give df = 2(n − 1) = 4
    w = K.difference({0: 1.0, 1: 2.0, 2: 3.0}, {3: 4.0, 4: 5.0, 5: 6.0})
    half = T975[4] * math.sqrt(2 / 3)
    assert (w["method"], w["n"]) == ("welch", [3, 3])
    assert (w["mean"], w["low"], w["high"]) == (pytest.approx(-3.0), pytest.approx(-3 - half), pytest.approx(-3 + half))
    assert K.difference({0: 1.0, 1: None}, {0: 0.5, 1: 0.5})["method"] == "welch"  # a seed without a value
    assert K.difference({0: 1.0}, {0: 0.5}) == {
        "mean": 0.5,
        "low": None,
        "high": None,
        "n": 1,
        "method": "paired",
        "seeds": [0],
    }
    assert K.difference({}, {0: 0.5}) is None


def group(label: str, n: int, finals: dict, best: dict | None = None, **algorithm) -> dict:
    """A group summary as write_report makes it, reduced to what the differences and the verdict read."""
    best = best or finals
    return {
        "label": label,
        "staleness": n,
        "seeds": sorted(finals),
        "algorithm": algorithm or None,
        "per_seed": [{"seed": s, "final_reward": finals[s], "best_reward": best[s]} for s in sorted(finals)],
    }


def test_paired_differences_per_n():
    groups = [
        group("vespo", 1, {0: 0.5, 1: 0.6}),
        group("grpo", 1, {0: 0.4, 1: 0.4}),
        group("vespo", 8, {0: 0.5, 1: 0.7}),
        group("grpo", 8, {0: 0.2, 1: 0.3}),
        group("sapo", 4, {0: 0.1}),
    ]
    diffs = K.paired_differences(groups)
    got = {(d["staleness"], d["baseline"], d["metric"]): d for d in diffs}
    assert set(got) == {
        (n, "grpo", m) for n in (1, 8) for m in ("final_reward", "best_reward")
    }  # sapo: no vespo at N=4
    d = got[(8, "grpo", "final_reward")]  # differences 0.3, 0.4: mean 0.35, s = 0.0707
    half = T975[1] * math.sqrt(0.005) / math.sqrt(2)
    assert (d["reference"], d["method"], d["n"]) == ("vespo", "paired", 2)
    assert (d["mean"], d["low"], d["high"]) == (
        pytest.approx(0.35),
        pytest.approx(0.35 - half),
        pytest.approx(0.35 + half),
    )


def test_collapse_rule_quiet_on_bernoulli_noise():
    """A stationary policy (reward ~ Binomial(32, p)/32 per step) is not a collapse: ≤ 1% false positives."""
    rng = np.random.default_rng(0)

    def rate(p: float, steps: int, runs: int) -> float:
        rewards = rng.binomial(32, p, size=(runs, steps)) / 32
        return np.mean([K.detect_collapse(curve(r, n_seqs=32))["status"] == "collapsed" for r in rewards])

    assert rate(0.3, 60, 2000) <= 0.01
    for p in (0.1, 0.2):
        for steps in (24, 60):
            assert rate(p, steps, 1000) <= 0.01, (p, steps)
    # a real drop at the same batch size is still a collapse
    r = np.concatenate([rng.binomial(32, 0.6, 40), rng.binomial(32, 0.1, 20)]) / 32
    assert K.detect_collapse(curve(r, n_seqs=32))["status"] == "collapsed"


# --------------------------------------------------------------------------- reports from run directories


def write_run(run_dir: Path, algo: str, rows: list[dict], *, torn: bool = False, **cfg_over) -> Path:
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in cfg_over.items()]
    save_config(load_config("tiny", algo, overrides), run_dir)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"kind": "train", "step": 99'
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def synthetic(
    algo: str, n: int = 40, collapse_at: int | None = None, seed: int = 0, evals: bool = True, full: bool = True
) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, n + 1):
        r = min(step / 15, 0.7) + rng.normal(0, 0.03)
        if collapse_at and step >= collapse_at:
            r = 0.02
        row = rec(step, r, response_length=20 + step, objective=algo, train_s=0.1, rollout_s=0.2)
        if full:
            row.update(
                entropy=1.0 - step / 100,
                lr=1e-3,
                staleness=0.5,
                log_w_mean=-0.01 * step,
                log_w_max=0.02 * step,
                ess=0.9,
                delta_abs_mean=0.01,
                mismatch_kl=0.001,
            )
            row.update({"suppressed_frac": 0.05} if algo == "vespo" else {"clip_frac": 0.1})
        rows.append(row)
        if evals and step % 20 == 0:
            rows.append(
                {
                    "kind": "eval",
                    "step": step,
                    "benchmark": "aime24",
                    "k": 4,
                    "avg_at_k": r / 2,
                    "pass_at_k": r,
                    "ci95_low": r / 2 - 0.05,
                    "ci95_high": r / 2 + 0.05,
                }
            )
    return rows


def png_refs(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def assert_pngs(report: Path) -> list[str]:
    refs = png_refs(report)
    assert refs
    for ref in refs:
        p = report.parent / ref
        assert p.is_file(), ref
        assert p.read_bytes()[:8] == PNG_MAGIC, ref
    return refs


def test_report_from_two_run_dirs(presets, tmp_path):
    a = write_run(tmp_path / "runs" / "tiny-vespo", "vespo", synthetic("vespo"), torn=True, trainer__steps=40)
    b = write_run(tmp_path / "runs" / "tiny-grpo", "grpo", synthetic("grpo", collapse_at=25), trainer__steps=40)
    out = tmp_path / "report"
    report = K.compare_command([str(a), str(b)], out=out)
    assert report == out / "report.md"
    refs = assert_pngs(report)
    for name in ("reward.png", "response_length.png", "entropy.png", "grad_norm.png", "weights.png", "eval.png"):
        assert name in refs
    text = report.read_text()
    # labelled by algorithm (from config.yaml), not by the directory names tiny-vespo / tiny-grpo
    assert "| vespo |" in text and "| grpo |" in text and "Collapse" in text and "tiny-vespo" in text
    assert "moving average over the last **3**" in text  # window stated (40 steps → 3)
    summary = json.loads((out / "summary.json").read_text())
    groups = {g["label"]: g for g in summary["groups"]}
    assert groups["vespo"]["collapse"][0]["status"] == "stable"
    col = groups["grpo"]["collapse"][0]
    assert col["status"] == "collapsed" and col["reason"] == "reward drop" and 25 <= col["step"] <= 27
    assert groups["vespo"]["weight_metric"] == "suppressed_frac"
    assert groups["grpo"]["weight_metric"] == "clip_frac"
    assert groups["grpo"]["final_reward"] == {"mean": pytest.approx(0.02), "low": None, "high": None, "n": 1}
    assert groups["vespo"]["eval"]["aime24"]["avg_at_k"]["mean"] == pytest.approx(
        [r for r in synthetic("vespo") if r["kind"] == "eval"][-1]["avg_at_k"]
    )
    runs = {r["label"]: r for r in summary["runs"]}
    assert runs["vespo"]["steps_done"] == 40  # the torn last line is ignored


def test_runs_on_different_hardware_are_numbered_in_the_runs_table(presets, tmp_path):
    """run.json's `starts` (runid.record_start): runs of one machine get a line saying so; runs of two get a
    machine column with a legend, a run resumed elsewhere both numbers, a run without a record a dash."""
    amd = {"step": 0, "cpu": "AMD EPYC", "cpu_flags": ["avx512f", "avx512_bf16"], "gpus": []}
    xeon = {"step": 9, "cpu": "Intel Xeon", "cpu_flags": ["amx_bf16"], "gpus": ["NVIDIA H100", "NVIDIA H100"]}
    dirs = [write_run(tmp_path / a, a, synthetic(a, n=12, evals=False), trainer__steps=12) for a in ("grpo", "vespo")]
    (dirs[0] / "run.json").write_text(json.dumps({"mode": "sync", "replay": None, "starts": [amd]}))
    report = K.compare_command([str(d) for d in dirs], out=tmp_path / "one")
    text = report.read_text()
    assert "every run with a record trained on AMD EPYC (avx512f, avx512_bf16); 1 run(s) from before" in text
    assert "| machine |" not in text and "†" not in text
    (dirs[1] / "run.json").write_text(json.dumps({"mode": "sync", "replay": None, "starts": [amd, xeon, xeon]}))
    text = K.compare_command([str(d) for d in dirs], out=tmp_path / "two").read_text()
    assert "1 = AMD EPYC (avx512f, avx512_bf16); 2 = Intel Xeon (amx_bf16) + 2× NVIDIA H100." in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("` |")]
    assert [row.split(" | ")[-2] for row in rows] == ["1", "1, 2"]
    results = [line for line in text.splitlines() if line.startswith(("| grpo |", "| vespo |")) and "stable" in line]
    assert [row.endswith(" † |") for row in results[:2]] == [False, True]  # vespo's time mixes two machines
    assert "† The group's runs trained on different machines" in text
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [r["hardware"] for r in summary["runs"]] == [
        ["AMD EPYC (avx512f, avx512_bf16)"],
        ["AMD EPYC (avx512f, avx512_bf16)", "Intel Xeon (amx_bf16) + 2× NVIDIA H100"],
    ]


def test_identical_runs_are_named_and_a_one_step_difference_is_not(presets, tmp_path):
    """Two algorithms that trained the same at every step (reward, grad norm, entropy, length; the loss value
    may differ) are reported as one identical pair; a third that differs at one step is not in it."""
    rows = synthetic("grpo", n=12, evals=False)
    other_loss = [{**r, "loss": -0.7} for r in rows]
    one_off = [{**r, "grad_norm": 0.51} if r["step"] == 7 else r for r in rows]
    runs = [
        write_run(tmp_path / "g", "grpo", rows, trainer__steps=12, trainer__staleness=1),
        write_run(tmp_path / "v", "vespo", other_loss, trainer__steps=12, trainer__staleness=1),
        write_run(tmp_path / "s", "gspo", one_off, trainer__steps=12, trainer__staleness=1),
    ]
    report = K.compare_command([str(r) for r in runs], out=tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["identical_runs"] == [{"staleness": 1, "seed": 0, "labels": ["grpo", "vespo"]}]
    assert "| grpo = vespo | 1 | 0 |" in report.read_text()
    report = K.compare_command([str(runs[0]), str(runs[2])], out=tmp_path / "report2")
    assert "## Identical runs" not in report.read_text()


def test_report_seeds_staleness_missing_keys(presets, tmp_path):
    root = tmp_path / "cmp"
    for algo in ("vespo", "grpo"):
        for n in (1, 2):
            for seed in (0, 1):
                write_run(
                    root / "runs" / f"{algo}-N{n}-s{seed}",
                    algo,
                    synthetic(algo, n=30, seed=seed, evals=False, full=(algo == "vespo")),
                    trainer__staleness=n,
                    trainer__seed=seed,
                    trainer__steps=30,
                )
    # a compare output directory stands for all of its runs
    report = K.compare_command([str(root)], out=tmp_path / "rep")
    refs = assert_pngs(report)
    assert "eval.png" not in refs  # no eval lines: no eval figure, no eval column
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    keys = sorted((g["label"], g["staleness"], tuple(g["seeds"])) for g in summary["groups"])
    assert keys == [("grpo", 1, (0, 1)), ("grpo", 2, (0, 1)), ("vespo", 1, (0, 1)), ("vespo", 2, (0, 1))]
    g = next(g for g in summary["groups"] if g["label"] == "grpo")
    assert g["ess_mean"] is None and g["weight_metric"] is None  # missing keys: "–", not a crash
    # two seeds: mean and t interval over seeds; the collapse rate with its Wilson interval
    finals = [r["final_reward"] for r in summary["runs"] if (r["label"], r["staleness"]) == ("grpo", 1)]
    assert set(g["final_reward"]) == {"mean", "low", "high", "n"} and set(g["best_reward"]) == set(g["final_reward"])
    assert g["final_reward"] == {**K.t_interval(finals, bounds=(0.0, 1.0)), "mean": pytest.approx(np.mean(finals))}
    assert g["collapse_rate"] == K.wilson_interval(0, 2)
    text = report.read_text()
    assert "(min–max over seeds)" in text and "## Differences: vespo − baseline" in text and "## Verdict" in text
    diffs = {(d["staleness"], d["metric"]): d for d in summary["paired_differences"]}
    assert set(diffs) == {(n, m) for n in (1, 2) for m in ("final_reward", "best_reward")}
    assert diffs[(1, "final_reward")]["method"] == "paired" and diffs[(1, "final_reward")]["seeds"] == [0, 1]
    verdict = {r["claim"]: r["verdict"] for r in summary["verdict"]}
    assert verdict["GSPO degrades as N grows"] == "no data" and "| **no data** |" in text


def test_report_of_unfinished_or_empty_run(presets, tmp_path):
    a = write_run(tmp_path / "a", "vespo", synthetic("vespo", n=5), trainer__steps=40)
    b = tmp_path / "b"
    save_config(load_config("tiny", "grpo", []), b)  # started, no metrics yet
    report = K.compare_command([str(a), str(b)], out=tmp_path / "rep")
    assert_pngs(report)
    text = report.read_text()
    assert "5/40" in text and "no data" in text


def test_compare_cli_reports_and_rejects(presets, tmp_path):
    from typer.testing import CliRunner

    from vespo_cli.cli import app

    a = write_run(tmp_path / "a", "vespo", synthetic("vespo", n=8))
    res = CliRunner().invoke(app, ["compare", str(a), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.md").is_file()
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "not a run directory" in res.output
    res = CliRunner().invoke(app, ["compare", str(a), "--staleness", "4"])
    assert res.exit_code == 2 and "--staleness" in res.output
    res = CliRunner().invoke(app, ["compare", str(a), "--x", "samples", "--out", str(tmp_path / "rep")])
    assert res.exit_code == 2 and "--x samples" in res.output and "n_seqs" in res.output


def test_labels_from_the_algorithm_section(presets, tmp_path):
    rows = synthetic("vespo", n=5, evals=False)
    specs = {
        name: K.existing_run(write_run(tmp_path / name, algo, rows, **over))
        for name, algo, over in [
            ("demo", "vespo", {}),
            ("ln", "vespo", {"algorithm__params__length_norm": "sqrt"}),
            ("sym", "vespo", {"algorithm__params__c1_neg": 2, "algorithm__params__c2_neg": 3}),
            ("d", "dapo", {}),
            ("g", "grpo", {"algorithm__correction": "tis"}),
            ("vespo+length_norm=linear-N4-s1", "vespo", {}),
        ]
    }  # a compare-named directory keeps its label
    assert {k: s.label for k, s in specs.items()} == {
        "demo": "vespo",
        "ln": "vespo+length_norm=sqrt",
        "sym": "vespo+c1_neg=2+c2_neg=3",
        "d": "dapo",
        "g": "grpo+correction=tis",
        "vespo+length_norm=linear-N4-s1": "vespo+length_norm=linear",
    }
    assert specs["sym"].algorithm["params"]["c1_neg"] == 2 and specs["sym"].algorithm["name"] == "vespo"
    # the tiny preset's own algorithm section (objective vespo, no params) is plain vespo
    assert K.describe_algorithm({"objective": "vespo", "params": {}})["label"] == "vespo"
    # a recorded preset name wins over the closest preset (grpo has dual_clip 3)
    assert K.describe_algorithm({"name": "dapo", "objective": "grpo", "params": {"dual_clip": 3.0}})["label"] == (
        "dapo+dual_clip=3"
    )
    assert K.describe_algorithm({"objective": "grpo", "params": {"dual_clip": 3.0}})["label"] == "grpo"


def test_same_label_runs_are_told_apart(presets, tmp_path):
    rows = synthetic("vespo", n=5, evals=False)
    a = write_run(tmp_path / "a", "vespo", rows)
    b = write_run(tmp_path / "b", "vespo", rows, trainer__lr=0.5)  # another experiment, same algorithm
    K.compare_command([str(a), str(b)], out=tmp_path / "rep")
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert sorted(g["label"] for g in summary["groups"]) == ["vespo (a)", "vespo (b)"]
    # two compare directories: their runs keep grouping by seed, told apart by the compare directory
    for cmp in ("c1", "c2"):
        for seed in (0, 1):
            write_run(
                tmp_path / cmp / "runs" / f"vespo-N2-s{seed}",
                "vespo",
                rows,
                trainer__seed=seed,
                trainer__lr=0.5 if cmp == "c2" else 0.001,
            )
    K.compare_command([str(tmp_path / "c1"), str(tmp_path / "c2")], out=tmp_path / "rep2")
    summary = json.loads((tmp_path / "rep2" / "summary.json").read_text())
    assert sorted((g["label"], tuple(g["seeds"])) for g in summary["groups"]) == [
        ("vespo (c1)", (0, 1)),
        ("vespo (c2)", (0, 1)),
    ]


def test_x_axis_samples(presets, tmp_path):
    rows = curve([0.1, 0.2, 0.3], n_seqs=32) + curve([0.4], n_seqs=64)[:0]
    np.testing.assert_allclose(K.x_values(rows, "samples"), [32, 64, 96])
    np.testing.assert_allclose(K.x_values(rows, "steps"), [1, 2, 3])
    assert K.samples_consumed(curve([0.1, 0.2])) is None  # no n_seqs
    a = write_run(tmp_path / "a", "vespo", synthetic("vespo", n=8))
    with pytest.raises(UserError, match="--x samples: .*n_seqs"):
        K.compare_command([str(a)], out=tmp_path / "rep", x="samples")
    with pytest.raises(UserError, match="--x frames: expected one of steps, samples"):
        K.compare_command([str(a)], out=tmp_path / "rep", x="frames")
    b = write_run(tmp_path / "b", "vespo", [{**r, "n_seqs": 32} for r in synthetic("vespo", n=8)])
    assert_pngs(K.compare_command([str(b)], out=tmp_path / "rep", x="samples"))
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["settings"]["x"] == "samples"
    assert "samples consumed" in (tmp_path / "rep" / "report.md").read_text()


# --------------------------------------------------------------------------- running: reuse and resume


@pytest.fixture
def fake_train(monkeypatch):
    """Replace the trainer: writes config.yaml and one metrics line per step (all of them, or
    `stop_at[label]` steps to simulate a killed compare). Records every call."""
    calls: list[dict] = []
    stop_at: dict[str, int] = {}

    def fake(cfg, run_dir, *, replay=None, resume=False, async_=False):
        run_dir = Path(run_dir)
        calls.append({"dir": run_dir.name, "resume": resume, "replay": replay, "cfg": cfg, "async": async_})
        if not resume:
            assert not (run_dir / "metrics.jsonl").exists()
            save_config(cfg, run_dir)
        done = len(K.train_records(K.read_jsonl(run_dir / "metrics.jsonl")))
        last = min(cfg.trainer.steps, stop_at.pop(run_dir.name, cfg.trainer.steps))
        with open(run_dir / "metrics.jsonl", "a") as f:
            for step in range(done + 1, last + 1):
                f.write(json.dumps(rec(step, 0.1 * step, objective=cfg.algorithm.objective)) + "\n")
        return {}

    monkeypatch.setattr(K.sweep, "train", fake)
    fake.calls, fake.stop_at = calls, stop_at
    return fake


def test_compare_runs_reuses_and_resumes(presets, tmp_path, fake_train):
    out = tmp_path / "cmp"
    kw = dict(preset="tiny", overrides=["trainer.steps=3"], out=out)
    fake_train.stop_at["grpo-N2-s0"] = 1  # killed after step 1
    report = K.compare_command(["vespo", "grpo"], **kw)
    assert [(c["dir"], c["resume"]) for c in fake_train.calls] == [("vespo-N2-s0", False), ("grpo-N2-s0", False)]
    assert report.is_file()
    fake_train.calls.clear()
    K.compare_command(["vespo", "grpo"], **kw)  # vespo complete: reused; grpo partial: resumed
    assert [(c["dir"], c["resume"]) for c in fake_train.calls] == [("grpo-N2-s0", True)]
    fake_train.calls.clear()
    report = K.compare_command(["vespo", "grpo"], **kw)  # everything complete: no training at all
    assert fake_train.calls == []
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["steps_done"] for r in summary["runs"]) == [3, 3]
    # another config in the same directory is refused, not silently reused
    with pytest.raises(UserError, match="another config"):
        K.compare_command(["vespo"], preset="tiny", overrides=["trainer.steps=3", "trainer.lr=0.5"], out=out)


def test_a_run_that_died_writing_its_final_checkpoint_is_not_complete(tmp_path):
    """Metrics at the last step but a newest checkpoint of an earlier one (the disk filled while step 32 was
    saved): resumed, not reused; without any checkpoint the metrics decide."""
    from vespo_cli.compare.sweep import is_complete

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve([0.1, 0.2, 0.3, 0.4])))
    assert is_complete(run, 4) and not is_complete(run, 5)
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    assert not is_complete(run, 4)
    (run / "checkpoints" / "step-4").mkdir()
    assert is_complete(run, 4)


def test_compare_grid_variants_and_replay(presets, tmp_path, fake_train):
    out = tmp_path / "cmp"
    replay = tmp_path / "shards"
    replay.mkdir()
    K.compare_command(
        ["vespo", "vespo:length_norm=sqrt"],
        preset="tiny",
        overrides=["trainer.steps=2"],
        staleness=[1, 4],
        seeds=2,
        replay=replay,
        out=out,
    )
    got = {c["dir"]: c["cfg"] for c in fake_train.calls}
    assert sorted(got) == sorted(
        f"{a}-N{n}-s{s}" for a in ("vespo", "vespo+length_norm=sqrt") for n in (1, 4) for s in (0, 1)
    )
    for name, cfg in got.items():
        n, s = re.search(r"-N(\d+)-s(\d+)$", name).groups()
        assert (cfg.trainer.staleness, cfg.trainer.seed, cfg.trainer.steps) == (int(n), int(s), 2)
        assert (cfg.algorithm.params.get("length_norm") == "sqrt") == ("length_norm" in name)
    assert all(c["replay"] == replay for c in fake_train.calls)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["groups"]) == 4 and all(len(g["seeds"]) == 2 for g in summary["groups"])
    assert_pngs(out / "report.md")


def test_compare_user_errors(presets, tmp_path, fake_train):
    with pytest.raises(UserError, match="unknown algorithm preset"):
        K.compare_command(["vespo", "nosuch"], preset="tiny", out=tmp_path / "x")
    with pytest.raises(UserError, match="^vespo:no_such_param=1: .*unknown parameter"):
        K.compare_command(["vespo:no_such_param=1"], preset="tiny", out=tmp_path / "x")
    with pytest.raises(UserError, match="no such run directory"):
        K.compare_command([str(tmp_path / "missing" / "run")], out=tmp_path / "x")
    with pytest.raises(UserError, match="--replay"):
        K.compare_command(["vespo"], preset="tiny", replay=tmp_path / "nope", out=tmp_path / "x")
    with pytest.raises(UserError, match="--seeds"):
        K.compare_command(["vespo"], preset="tiny", seeds=0, out=tmp_path / "x")
    assert fake_train.calls == []  # every config is checked before anything trains


def test_default_out_dir(presets, tmp_path, fake_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = K.compare_command(["grpo"], preset="tiny", overrides=["trainer.steps=1"])
    assert report == Path("runs/compare-tiny/report.md") and report.is_file()
    assert Path("runs/compare-tiny/runs/grpo-N2-s0/metrics.jsonl").is_file()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_compare_end_to_end_tiny(presets, tmp_path, monkeypatch):
    """Two algorithms on the tiny preset, two steps each, through the real trainer."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "cmp"
    report = K.compare_command(["vespo", "grpo"], preset="tiny", overrides=["trainer.steps=2"], out=out)
    assert report.is_file()
    assert_pngs(report)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["label"] for r in summary["runs"]) == ["grpo", "vespo"]
    assert all(r["steps_done"] == 2 for r in summary["runs"])
    # a second compare reuses both runs
    calls = []
    monkeypatch.setattr(K.sweep, "train", lambda *a, **k: calls.append(a))
    K.compare_command(["vespo", "grpo"], preset="tiny", overrides=["trainer.steps=2"], out=out)
    assert calls == []


def test_compare_async_grid(presets, tmp_path, fake_train):
    """`--async`: every run trains with async workers and is labelled <algo>+async; not with --replay."""
    out = tmp_path / "cmp"
    K.compare_command(
        ["grpo", "vespo"], preset="tiny", overrides=["trainer.steps=2"], staleness=[1], seeds=2, out=out, async_=True
    )
    assert sorted((c["dir"], c["async"]) for c in fake_train.calls) == sorted(
        (f"{a}+async-N1-s{s}", True) for a in ("grpo", "vespo") for s in (0, 1)
    )
    summary = json.loads((out / "summary.json").read_text())
    assert {g["label"] for g in summary["groups"]} == {"grpo+async", "vespo+async"}
    assert summary["settings"]["claims"]["planned_seeds"] == {"1": 2}  # the sweep's seeds are its plan
    K.compare_command(["grpo"], preset="tiny", overrides=["trainer.steps=2"], seeds=2, out=out, planned_seeds=["3"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["claims"]["planned_seeds"] == {"every N": 3}  # --planned-seeds overrides it
    assert {r["verdict"] for r in summary["verdict"]} <= {"interim", "no data"}  # 2 of 3 seeds: nothing judged
    with pytest.raises(UserError, match="--replay and --async"):
        K.compare_command(["grpo"], preset="tiny", replay=tmp_path, out=out, async_=True)


def test_compare_names_undecidable_claims_before_it_trains(presets, tmp_path, fake_train, capsys, monkeypatch):
    """A collapse claim that no outcome of the sweep's runs could resolve is named before the first run
    trains: 3 runs per arm give at best p = 2·4⁻³ = 0.031, not below Holm's 0.05/2 in a family of two."""
    claims = tmp_path / "claims.yaml"
    claims.write_text(
        "family: t\nclaims:\n"
        "  - {claim: fewer, form: collapse, a: vespo, b: grpo}\n"
        "  - {claim: better, form: difference, a: vespo, b: grpo}\n"
    )
    said_before_training = []
    train = K.sweep.train  # fake_train's
    monkeypatch.setattr(
        K.sweep, "train", lambda *a, **k: (said_before_training.append(capsys.readouterr().err), train(*a, **k))[1]
    )
    sweep = dict(preset="tiny", overrides=["trainer.steps=2"], seeds=3, out=tmp_path / "cmp", claims=str(claims))
    K.compare_command(["vespo", "grpo"], **sweep)
    first = said_before_training[0]
    assert (
        "note: claim 'fewer' (collapsed runs: vespo vs grpo at N=2): cannot come out either way at 3 and 3 runs"
        in first
    )
    assert "(4 runs per arm can)" in first and "'better'" not in first
    K.compare_command(["vespo", "grpo"], **sweep, planned_seeds=["4"])
    assert "cannot come out" not in capsys.readouterr().err  # at the planned 4 runs per arm it can


def test_last_minibatch_drift_takes_each_rollout_batch_s_last_minibatch():
    rows = [
        rec(1, 0.1, iteration=0, minibatch=0, staleness=0, delta_abs_mean=0.0, log_w_std=0.0, w_ess=1.0),
        rec(2, 0.1, iteration=0, minibatch=1, staleness=1, delta_abs_mean=0.2, log_w_std=1.0, w_ess=0.4),
        rec(3, 0.1, iteration=1, minibatch=0, staleness=0, delta_abs_mean=0.0, log_w_std=0.0, w_ess=1.0),
        rec(4, 0.1, iteration=1, minibatch=1, staleness=1, delta_abs_mean=0.4, log_w_std=2.0, w_ess=0.2),
    ]
    got = K.analysis.last_minibatch_drift(rows)
    want = {"staleness": 1.0, "delta_abs_mean": 0.3, "log_w_std": 1.5, "w_ess": 0.3, "w_ess_min": 0.2}
    assert got == pytest.approx(want)
    assert K.analysis.last_minibatch_drift([]) == {
        "staleness": None,
        "delta_abs_mean": None,
        "log_w_std": None,
        "w_ess": None,
        "w_ess_min": None,
    }


def test_final_eval_of_one_benchmark():
    from vespo_cli.compare.analysis import final_eval

    assert final_eval({"arith": {"avg_at_k": 0.8625}}) == 0.8625  # as logged by `vespo eval`: a fraction
    assert final_eval({}) is None and final_eval({"a": {"avg_at_k": 1.0}, "b": {"avg_at_k": 2.0}}) is None


def test_eval_points_span_the_seeds_or_one_seeds_interval():
    """The eval figure's bars: with several seeds their min–max (as the results table), with one its eval's
    95% interval; the point is the mean over seeds."""
    from vespo_cli.compare.plots import _eval_points
    from vespo_cli.compare.runs import Loaded

    def run(*evals):
        rows = [
            {"kind": "eval", "benchmark": "arith", "step": s, "avg_at_k": v, "ci95_low": v - 0.1, "ci95_high": v + 0.05}
            for s, v in evals
        ]
        return Loaded(spec=None, rows=[], evals=rows, summary={})

    a, b = run((16, 0.2), (32, 0.4)), run((16, 0.3))
    assert _eval_points([a, b], "arith", "steps") == [
        (16.0, pytest.approx(0.25), 0.2, 0.3),  # two seeds: min–max
        (32.0, 0.4, pytest.approx(0.3), pytest.approx(0.45)),  # one seed: its interval
    ]
    assert _eval_points([a], "gsm8k", "steps") == []


def test_terminal_summary_of_a_compare():
    """What `vespo compare` prints before the report's path: a row per group, a line per claim with data."""
    from rich.console import Console

    from vespo_cli.compare.sweep import results_table, verdict_summary

    summary = {
        "groups": [
            {
                "label": "sapo",
                "staleness": 32,
                "seeds": [0, 1],
                "final_reward": {"mean": 0.2},
                "final_eval": {"mean": 0.054},
                "collapse": [{"status": "collapsed"}, {"status": "stable"}],
            }
        ],
        "verdict": [
            {"claim": "VESPO learns better", "verdict": "supported", "estimate": 0.1, "p_adjusted": 0.0123},
            {"claim": "VESPO is stable", "verdict": "interim", "estimate": 0.1, "p_adjusted": None},
            {"claim": "VESPO beats GSPO", "verdict": "not resolved", "estimate": None, "p_adjusted": None},
        ],
    }
    console = Console(record=True, width=120)
    console.print(results_table(summary))
    row = [line for line in console.export_text().splitlines() if line.strip().startswith("sapo")]
    assert row and row[0].split() == ["sapo", "│", "32", "│", "2", "│", "0.200", "│", "5.4", "│", "1/2"]
    assert verdict_summary(summary) == [
        "VESPO learns better: supported (Holm p = 0.012)",
        "VESPO is stable: interim",
        "1 claim(s) without data in these runs",
    ]
