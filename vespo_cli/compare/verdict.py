"""The paper's claims judged from a compare's group summaries (pure).

Every claim is decided by one 95% interval of a difference of final rewards, paired by seed
(`stats.difference`):
- "VESPO stays stable as N grows": d = VESPO at each higher N − VESPO at the lowest N (a row each). Supported
  when d's interval lies above −MARGIN (any drop is smaller than MARGIN), contradicted when it lies
  below −MARGIN (a drop larger than MARGIN), otherwise not resolved at this power.
- "SAPO (GSPO) degrades as N grows": the same d for SAPO (GSPO), the mirror rule: supported below
  −MARGIN, contradicted above −MARGIN.
- "length normalisation hurts" / "asymmetric c helps": d = VESPO − the ablation at the highest N
  both ran. Supported when the interval lies above 0, contradicted when it lies below 0.
- "VESPO stays stable under full asynchrony": d = VESPO async − VESPO synchronous at the same N, with
  claim 1's rule; "VESPO beats GRPO under full asynchrony": d = VESPO async − GRPO async, with the
  ablations' rule (`vespo compare --async` labels those runs `<algo>+async`).
A difference without an interval (one seed) is not resolved; a claim whose runs are absent has no data.
"""

from __future__ import annotations

from collections.abc import Sequence

from .groups import REFERENCE, seed_values
from .labels import join_label
from .stats import difference

MARGIN = 0.05  # a change of the final reward (rewards in [0, 1]) smaller than this counts as none
METRICS = ("final_eval", "final_reward")  # the final policy's eval where every group has one
C_KEYS = ("c1_pos", "c2_pos", "c1_neg", "c2_neg")
SUPPORTED, CONTRADICTED, UNRESOLVED, NO_DATA = "supported", "contradicted", "not resolved at this power", "no data"


def _by_label(groups: Sequence[dict], label: str) -> dict[int, dict]:
    return {int(g["staleness"]): g for g in groups if g["label"] == label}


def _decide(d: dict | None, above: float, supported_above: bool) -> str:
    """SUPPORTED / CONTRADICTED by where d's interval lies against `above`; UNRESOLVED when it
    straddles it or there is no interval; NO_DATA without d."""
    if d is None:
        return NO_DATA
    if d.get("low") is None or d.get("high") is None:
        return UNRESOLVED
    if d["low"] > above:
        return SUPPORTED if supported_above else CONTRADICTED
    if d["high"] < above:
        return CONTRADICTED if supported_above else SUPPORTED
    return UNRESOLVED


def metric_for(groups: Sequence[dict]) -> str:
    """`final_eval` when every group has it for every seed, else `final_reward`."""
    have = all(p.get("final_eval") is not None for g in groups for p in g.get("per_seed") or [])
    return METRICS[0] if groups and have else METRICS[1]


def _row(claim: str, comparison: str, d: dict | None, verdict: str, rule: str, metric: str) -> dict:
    return {
        "claim": claim,
        "comparison": comparison,
        "metric": metric,
        "difference": d,
        "verdict": verdict,
        "rule": rule,
    }


def _across_n(groups: Sequence[dict], label: str, claim: str, stable: bool, margin: float, metric: str) -> list[dict]:
    """Claims 1 and 2: `label` at each higher N − at its lowest N (one row each, so a new stale cell with
    one seed does not hide what the others resolve)."""
    by_n = _by_label(groups, label)
    if len(by_n) < 2:
        return [_row(claim, f"{label}: runs at two N or more", None, NO_DATA, "", metric)]
    lo_n = min(by_n)
    rule = f"supported if the interval lies {'above' if stable else 'below'} −{margin:g}"
    rows = []
    for hi_n in sorted(by_n)[1:]:
        d = difference(seed_values(by_n[hi_n], metric), seed_values(by_n[lo_n], metric))
        rows.append(_row(claim, f"{label} N={hi_n} − {label} N={lo_n}", d, _decide(d, -margin, stable), rule, metric))
    return rows


def _is_length_norm(g: dict) -> bool:
    alg = g.get("algorithm") or {}
    ov = alg.get("overrides") or {}
    return alg.get("name") == REFERENCE and set(ov) == {"length_norm"} and ov["length_norm"] != "none"


def _is_symmetric_c(g: dict) -> bool:
    alg = g.get("algorithm") or {}
    ov, p = alg.get("overrides") or {}, alg.get("params") or {}
    return (
        alg.get("name") == REFERENCE
        and bool(ov)
        and set(ov) <= set(C_KEYS)
        and p.get("c1_neg") == p.get("c1_pos")
        and p.get("c2_neg") == p.get("c2_pos")
    )


def _ablations(groups: Sequence[dict], pick, claim: str, metric: str) -> list[dict]:
    """Claims 3 and 4: VESPO − each ablation `pick` selects, at the highest N both ran."""
    labels = dict.fromkeys(g["label"] for g in groups if pick(g))
    rows = [_pair(groups, REFERENCE, label, claim, 0.0, metric) for label in labels]
    return rows or [_row(claim, f"{REFERENCE} and its ablation", None, NO_DATA, "", metric)]


def _pair(groups: Sequence[dict], label: str, base: str, claim: str, above: float, metric: str) -> dict:
    """`label` − `base` at the highest N both ran, supported when the interval lies above `above`."""
    a, b = _by_label(groups, label), _by_label(groups, base)
    common = set(a) & set(b)
    if not common:
        return _row(claim, f"{label} − {base}: at the same N", None, NO_DATA, "", metric)
    n = max(common)
    d = difference(seed_values(a[n], metric), seed_values(b[n], metric))
    rule = f"supported if the interval lies above {'−' if above < 0 else ''}{abs(above):g}"
    return _row(claim, f"{label} − {base} at N={n}", d, _decide(d, above, True), rule, metric)


def paper_verdict(groups: Sequence[dict], margin: float = MARGIN) -> list[dict]:
    """One row per claim and comparison: {"claim", "comparison", "metric", "difference" (stats.difference
    or None), "verdict" (supported / contradicted / not resolved at this power / no data), "rule"}, on
    the final eval where every run has one (`metric_for`), else the final training reward."""
    metric = metric_for(groups)
    rows = _across_n(groups, REFERENCE, "VESPO stays stable as N grows", True, margin, metric)
    for a in ("sapo", "gspo"):
        rows += _across_n(groups, a, f"{a.upper()} degrades as N grows", False, margin, metric)
    rows += _ablations(groups, _is_length_norm, "length normalisation hurts", metric)
    rows += _ablations(groups, _is_symmetric_c, "asymmetric c helps", metric)
    vespo_async, grpo_async = join_label(REFERENCE, ["async"]), join_label("grpo", ["async"])  # as sweep labels them
    rows.append(_pair(groups, vespo_async, REFERENCE, "VESPO stays stable under full asynchrony", -margin, metric))
    rows.append(_pair(groups, vespo_async, grpo_async, "VESPO beats GRPO under full asynchrony", 0.0, metric))
    return rows
