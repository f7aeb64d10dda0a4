"""The sentences of `vespo probe`'s report, computed from the judged records (judge.py): the K = 0
calibration check, whether the noise floors are resolved (and how many prompts would resolve them),
and per objective the K at which its stale gradient leaves the floor. Nothing here is stronger than
the intervals and Holm-adjusted p-values it quotes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from .bootstrap import LEVEL
from .judge import FLOOR_RESOLVED_ABOVE, calibrated, leaves_floor, prompts_to_resolve

FLOORS = {"noise_floor": "fresh floor", "floor_stale": "stale floor"}


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def ci(r: dict, key: str) -> str:
    """`point [low, high]` of a figure of a record (`–` where it has no point)."""
    if r.get(key) is None:
        return "–"
    return f"{fmt(r.get(key))} [{fmt(r.get(key + '_low'))}, {fmt(r.get(key + '_high'))}]"


def _disattenuated(r: dict) -> str:
    return (
        "not estimable (floor not resolved)" if r.get("cosine_disattenuated") is None else ci(r, "cosine_disattenuated")
    )


def ks(values: Sequence[int]) -> str:
    return ", ".join(str(k) for k in values) if values else "none"


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def objectives_of(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["objective"] for r in records))


def by_k(records: Sequence[dict], objective: str) -> list[dict]:
    return sorted((r for r in records if r["objective"] == objective), key=lambda r: r["staleness"])


def calibration_lines(records: Sequence[dict]) -> list[str]:
    """The K = 0 check: the verdict, then each K = 0 row's gap and disattenuated cosine."""
    verdict = calibrated(records)
    if verdict is None:
        return ["K = 0 was not probed: the probe's calibration is not checked (add `--age 0`).", ""]
    rows = [r for r in records if r["staleness"] == 0]
    alpha = 1 - LEVEL
    head = (
        f"**calibrated**: at K = 0 no objective's gap is resolved away from 0 (Holm over the {len(rows)} K = 0 rows, "
        f"adjusted p ≥ {alpha:g}), as it must not be: the stale data is then one more fresh draw."
        if verdict
        else "**the probe is not calibrated**: at K = 0, where the stale data is one more fresh draw, the gap of "
        + ", ".join(f"{r['objective']}" for r in rows if not r["calibrated"])
        + f" is resolved away from 0 (Holm over the {len(rows)} K = 0 rows, adjusted p < {alpha:g}); "
        "the gaps at K > 0 cannot be read as direction lost to staleness."
    )
    if verdict and not all(r["floor_resolved"] for r in rows):
        head += " The check has little power here: the floors at K = 0 are not resolved (next section)."
    lines = [head, ""]
    lines += [
        f"- {r['objective']}: gap {ci(r, 'gap')}, p {_p(r.get('gap_p'))} (adjusted {_p(r.get('gap_p_holm'))}); "
        f"disattenuated cosine (expected 1) {_disattenuated(r)}"
        for r in rows
    ]
    return lines + [""]


def floor_lines(records: Sequence[dict], level: float = LEVEL) -> list[str]:
    """Whether the floors are resolved, and for the rows where not, the prompts that would resolve them
    with the computation shown."""
    bad = [r for r in records if not r["floor_resolved"]]
    prompts = records[0]["groups"] if records else 0
    if not bad:
        return [
            f"Every noise floor is resolved: at every K, for every objective, the lower bounds of the fresh floor "
            f"and the stale floor are above {FLOOR_RESOLVED_ABOVE:g}.",
            "",
        ]
    z = NormalDist().inv_cdf(0.5 + level / 2)
    lines = [
        f"The noise floor is **not resolved** in {len(bad)} of {len(records)} rows (a floor is resolved when its "
        f"lower bound is above {FLOOR_RESOLVED_ABOVE:g}: two independent estimates of {prompts} prompts agree "
        f"significantly). There the disattenuated cosine is not estimable and a gap consistent with 0 is a lack "
        f"of power, not evidence of fidelity. Prompts that would resolve a floor f with bootstrap SE s at n = "
        f"{prompts} prompts: n' = n · (z · s / (f − {FLOOR_RESOLVED_ABOVE:g}))², z = {z:.3f} (SE ∝ 1/√n):",
        "",
    ]
    for r in bad:
        parts = []
        for key, name in FLOORS.items():
            f, s = r.get(key), r.get(f"{key}_se")
            need = prompts_to_resolve(f, s, prompts, level)
            if need is None:
                parts.append(f"{name} {fmt(f)} ≤ {FLOOR_RESOLVED_ABOVE:g}: no number of prompts resolves it")
            else:
                parts.append(
                    f"{name} {fmt(f)}: {prompts} · ({z:.3f} · {fmt(s)} / {fmt(f - FLOOR_RESOLVED_ABOVE)})² → {need}"
                )
        total = r["prompts_to_resolve"]
        lines.append(
            f"- {r['objective']}, K = {r['staleness']}: "
            + "; ".join(parts)
            + (f"; both: **{total} prompts**" if total is not None else "")
        )
    return lines + [""]


def leave_lines(records: Sequence[dict]) -> list[str]:
    """Per objective, the first K at which its gap is resolved below 0 (Holm over (objective, K > 0))."""
    family = [r for r in records if r["staleness"] > 0]
    alpha = 1 - LEVEL
    lines = [
        f"Below the floor: the gap (cosine − joint floor) resolved below 0 by its paired bootstrap, Holm-adjusted "
        f"over the {len(family)} (objective, K > 0) rows at {alpha:g}.",
        "",
    ]
    for o in objectives_of(records):
        rows = [r for r in by_k(records, o) if r["staleness"] > 0]
        first = leaves_floor(records, o)
        if first is not None:
            text = (
                f"- **{o}** leaves the floor at K = {first['staleness']}: gap {ci(first, 'gap')}, adjusted p "
                f"{_p(first['gap_p_holm'])}; disattenuated cosine {_disattenuated(first)}"
                f"; below it at K = {ks([r['staleness'] for r in rows if r.get('below_floor')])}"
            )
        else:
            text = (
                f"- **{o}** is not resolved below the floor at any probed K > 0 ({ks([r['staleness'] for r in rows])})"
            )
        unresolved = [r["staleness"] for r in rows if not r["floor_resolved"]]
        if unresolved:
            text += f"; the floor is not resolved at K = {ks(unresolved)}"
        if rows:
            last = rows[-1]
            text += (
                f". At K = {last['staleness']}: cosine {fmt(last['cosine'])}, joint floor {fmt(last['floor_joint'])}, "
                f"disattenuated {fmt(last['cosine_disattenuated'])}, to the reference {fmt(last['cosine_pg'])}, "
                f"norm ratio {fmt(last['norm_ratio'])}, ESS/n {fmt(last['ess'])}."
            )
        lines.append(text)
    return lines + [""]
