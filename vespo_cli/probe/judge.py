"""What the probe's records resolve (figures.py defines the figures): whether the noise floors are
resolved and how many prompts would resolve them, the K = 0 calibration check, and at which K each
objective's stale gradient leaves the floor, Holm-adjusted over the family of (objective, K > 0).

Each judgement is written into the records (probe.json) so the report's text is computed from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from ..compare.stats import holm
from .bootstrap import LEVEL

FLOOR_RESOLVED_ABOVE = 0.0  # a floor is resolved when its BCa lower bound is above this: two
# independent estimates agree significantly, so the reliability in (D) of figures.py is not 0


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def prompts_to_resolve(floor: float, se: float, prompts: int, level: float = LEVEL) -> int | None:
    """The prompt groups at which a floor of this size would be resolved: its standard error scales as
    1/√n (groups are i.i.d.), se(n) = se · √(prompts / n), and floor − z · se(n) > FLOOR_RESOLVED_ABOVE
    gives n > prompts · (z · se / (floor − FLOOR_RESOLVED_ABOVE))², z the normal (1 + level)/2 quantile.
    None where the observed floor is not above FLOOR_RESOLVED_ABOVE (no number of prompts resolves it)."""
    if not (_finite(floor) and _finite(se)) or floor <= FLOOR_RESOLVED_ABOVE:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return max(2, math.ceil(prompts * (z * se / (floor - FLOOR_RESOLVED_ABOVE)) ** 2))


def judge(records: list[dict], level: float = LEVEL) -> list[dict]:
    """Adds to every record, in place (and returns them):

    - `floor_resolved`: both floors of (D), the fresh `noise_floor` and the stale `floor_stale`, have
      their lower bound above FLOOR_RESOLVED_ABOVE; where not, `cosine_disattenuated` and its bounds
      are None (not estimable: (D) divides by a reliability that may be 0);
    - `prompts_to_resolve`: the larger of `prompts_to_resolve` of the two floors (None: unreachable);
    - `gap_p_holm`: the gap's p-value Holm-adjusted within its family: the K = 0 rows (the
      calibration check) or the K > 0 rows (does the stale gradient leave the floor);
    - `below_floor` (K > 0): the gap is resolved below 0 (adjusted p < 1 − level and gap < 0);
    - `calibrated` (K = 0): the gap is consistent with 0 (adjusted p ≥ 1 − level).
    """
    for r in records:
        r["floor_resolved"] = all(
            _finite(r.get(f"{key}_low")) and r[f"{key}_low"] > FLOOR_RESOLVED_ABOVE
            for key in ("noise_floor", "floor_stale")
        )
        if not r["floor_resolved"]:
            r.update(dict.fromkeys(("cosine_disattenuated", "cosine_disattenuated_low", "cosine_disattenuated_high")))
        need = [
            prompts_to_resolve(r.get(k), r.get(f"{k}_se"), r["groups"], level) for k in ("noise_floor", "floor_stale")
        ]
        r["prompts_to_resolve"] = None if None in need else max(need)
    for family in ([r for r in records if r["staleness"] == 0], [r for r in records if r["staleness"] > 0]):
        pvalues = [r["gap_p"] if _finite(r.get("gap_p")) else None for r in family]  # NaN: not in the family
        for r, p in zip(family, holm(pvalues)):
            r["gap_p_holm"] = p
            resolved = p is not None and p < 1 - level
            if r["staleness"] == 0:
                r["calibrated"] = not resolved
            else:
                r["below_floor"] = resolved and r["gap"] < 0
    return records


def calibrated(records: Sequence[dict]) -> bool | None:
    """The probe's K = 0 check: no K = 0 row's gap is resolved away from 0 (None: K = 0 not probed)."""
    rows = [r for r in records if r["staleness"] == 0]
    return all(r["calibrated"] for r in rows) if rows else None


def leaves_floor(records: Sequence[dict], objective: str) -> dict | None:
    """The record of the first K at which `objective`'s gap is resolved below 0, else None."""
    rows = sorted(
        (r for r in records if r["objective"] == objective and r.get("below_floor")), key=lambda r: r["staleness"]
    )
    return rows[0] if rows else None
