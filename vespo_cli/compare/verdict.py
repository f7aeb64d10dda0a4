"""The claims of a claims file (`claims.py`) judged from a compare's group summaries (pure).

Each claim gives one row per compared N (or per matching baseline label). A t-based row is a linear contrast
of per-seed endpoint values (`stats.contrast`: paired by seed where the seeds pair, Welch otherwise) tested
two-sided against its boundary: −margin for `noninferior` and `degrades`, +margin for `interaction` and
`difference`. A `collapse` row is Boschloo's exact test on the collapse counts, with a design check: counts of
a few runs give only a few p-values, so it states `best_p`, the smallest p any outcome could give at the planned
runs per arm, and says when that is not below Holm's strictest level (no outcome could resolve the row). The
p-values of every row with data form one family, Holm-adjusted (`stats.holm`); a row is **supported** when its
adjusted p is below the family's α and the estimate lies on the claim's side of the boundary, **contradicted**
when it is below α on the other side, otherwise **not resolved**, with the minimum detectable effect at its n and the
seeds that would resolve the observed effect at the observed spread (both at Holm's strictest level α/m,
power from the claims file). The raw 95% interval is reported beside it: without adjustment, the interval
excludes the boundary exactly when the raw p is below 0.05.

A study that planned its seeds (the claims file's `planned_seeds`, or `vespo compare --planned-seeds`) is judged
at that n only: a row any of whose groups has fewer seeds than planned at its N is **interim**, whatever its p
(its estimate, interval and p are shown; calling it at a look the plan did not make would spend α twice).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from .claims import Claim, ClaimsFile
from .groups import seed_values
from .stats import (
    MAX_RUNS,
    collapse_pvalue,
    collapse_pvalues,
    contrast,
    detectable_ncp,
    holm,
    newcombe_interval,
    runs_to_resolve,
    runs_to_resolve_at_best,
    seeds_to_resolve,
    t_test,
)

SUPPORTED, CONTRADICTED, UNRESOLVED, NO_DATA = "supported", "contradicted", "not resolved", "no data"
INTERIM = "interim"
GREATER_FORMS = ("noninferior", "interaction", "difference")  # supported when the estimate is above the boundary


def _by_n(groups: Sequence[dict], label: str) -> dict[int, dict]:
    return {int(g["staleness"]): g for g in groups if g["label"] == label}


def _baselines(claim: Claim, groups: Sequence[dict]) -> list[str]:
    """The labels `b` names (a glob matches several; noninferior/degrades default to `a`)."""
    if claim.b is None:
        return [claim.a]
    if any(ch in claim.b for ch in "*?["):
        return sorted({g["label"] for g in groups if fnmatch.fnmatchcase(g["label"], claim.b)} - {claim.a})
    return [claim.b]


def _pick(ns: Sequence[int], at) -> list[int]:
    ns = sorted(ns)
    if not ns:
        return []
    if at == "highest":
        return [ns[-1]]
    if at == "each":
        return ns
    return [n for n in ns if n in set(at)]


def _ref_n(claim: Claim, ns: Sequence[int]) -> int | None:
    if claim.ref_n == "lowest":
        return min(ns) if ns else None
    return claim.ref_n if claim.ref_n in ns else None


def _empty(claim: Claim, comparison: str, endpoint: str, note: str) -> dict:
    return {
        "claim": claim.claim,
        "form": claim.form,
        "comparison": comparison,
        "endpoint": endpoint,
        "margin": claim.margin_relative if claim.margin_relative is not None else claim.margin,
        "margin_relative": claim.margin_relative is not None,
        "estimate": None,
        "low": None,
        "high": None,
        "n": None,
        "method": None,
        "p": None,
        "p_adjusted": None,
        "mde": None,
        "seeds_needed": None,
        "best_p": None,
        "undecidable": None,  # why no outcome at the planned runs could resolve the row (`_attainable`)
        "verdict": NO_DATA,
        "note": note,
    }


def _t_row(claim: Claim, comparison: str, endpoint: str, cells: list, ref_level_cell: dict | None) -> dict:
    """A t-tested contrast. `cells` [(weight, {seed: value})] give the difference the claim is about;
    for a relative margin δ the reference cell `ref_level_cell` enters as +δ·B(ref) (A − (1 − δ)·B > 0)."""
    row = _empty(claim, comparison, endpoint, "")
    d = contrast(cells)
    if d is None:
        return {**row, "note": "an arm has no value of the endpoint"}
    margin, tested = claim.margin, d
    if claim.margin_relative is not None:
        tested = contrast([*cells, (claim.margin_relative, ref_level_cell)])
        margin = claim.margin_relative * contrast([(1.0, ref_level_cell)])["mean"]
    boundary = -margin if claim.form in ("noninferior", "degrades") else margin
    shift = tested["mean"] - d["mean"]  # δ·B̄(ref) for a relative margin, else 0
    row.update(estimate=d["mean"], n=d["n"], method=d["method"], margin=margin, boundary=boundary)
    row.update(se=tested["se"], df=tested["df"], sd=tested["sd"])
    if tested["low"] is None:
        return {**row, "verdict": UNRESOLVED, "note": "one seed: no interval"}
    row.update(low=tested["low"] - shift, high=tested["high"] - shift)
    row["p"] = t_test(tested["mean"], tested["se"], tested["df"], boundary + shift)
    return {**row, "verdict": UNRESOLVED}


def _collapse_row(claim: Claim, comparison: str, ga: dict, gb: dict) -> dict:
    row = _empty(claim, comparison, "collapse", "")
    ca = [c["status"] for c in ga.get("collapse") or [] if c["status"] != "no data"]
    cb = [c["status"] for c in gb.get("collapse") or [] if c["status"] != "no data"]
    if not ca or not cb:
        return {**row, "note": "no run with data in an arm"}
    ka, kb = sum(s == "collapsed" for s in ca), sum(s == "collapsed" for s in cb)
    d = newcombe_interval(ka, len(ca), kb, len(cb))
    row.update(estimate=d["mean"], low=d["low"], high=d["high"], n=[len(ca), len(cb)], method="boschloo", boundary=0.0)
    row.update(counts=[ka, kb], p=collapse_pvalue(ka, len(ca), kb, len(cb)), verdict=UNRESOLVED)
    if ka == kb == 0:
        row["note"] = "no run collapsed in either arm: counts cannot separate them in this setting"
    return row


def _rows_for(claim: Claim, groups: Sequence[dict], default_endpoint: str) -> list[dict]:
    endpoint = "collapse" if claim.form == "collapse" else (claim.endpoint or default_endpoint)
    a = _by_n(groups, claim.a)
    rows = []
    for base in _baselines(claim, groups):
        b = _by_n(groups, base)
        if not a or not b:
            rows.append(_empty(claim, f"{claim.a} vs {claim.b or claim.a}", endpoint, "runs absent"))
            continue
        rows += _compare(claim, a, b, base, endpoint)
    return rows or [_empty(claim, f"{claim.a} vs {claim.b}", endpoint, "no label matches b")]


def _compare(claim: Claim, a: dict[int, dict], b: dict[int, dict], base: str, endpoint: str) -> list[dict]:
    """The rows of one (A, B) pair: one per N picked by `at`; each row names its groups' N and seed counts
    ("groups"), against which a planned number of seeds is checked (`judge`)."""
    form, rows = claim.form, []
    if form in ("noninferior", "degrades") and claim.ref_n != "same":
        ref = _ref_n(claim, sorted(b))
        ns = _pick([n for n in a if not (base == claim.a and n == ref)], claim.at) if ref is not None else []
        for n in ns:
            cells = [(1.0, seed_values(a[n], endpoint)), (-1.0, seed_values(b[ref], endpoint))]
            row = _t_row(claim, f"{claim.a} N={n} − {base} N={ref}", endpoint, cells, cells[1][1])
            rows.append(_with_groups(row, (n, a[n]), (ref, b[ref])))
    elif form in ("noninferior", "degrades"):  # ref_n: same
        for n in _pick(set(a) & set(b), claim.at):
            cells = [(1.0, seed_values(a[n], endpoint)), (-1.0, seed_values(b[n], endpoint))]
            row = _t_row(claim, f"{claim.a} − {base} at N={n}", endpoint, cells, cells[1][1])
            rows.append(_with_groups(row, (n, a[n]), (n, b[n])))
    elif form == "interaction":
        common = sorted(set(a) & set(b))
        ref = _ref_n(claim, common)
        for n in _pick([n for n in common if ref is not None and n != ref], claim.at):
            cells = [
                (1.0, seed_values(a[n], endpoint)),
                (-1.0, seed_values(a[ref], endpoint)),
                (-1.0, seed_values(b[n], endpoint)),
                (1.0, seed_values(b[ref], endpoint)),
            ]
            comparison = f"[{claim.a} N={n} − N={ref}] − [{base} N={n} − N={ref}]"
            row = _t_row(claim, comparison, endpoint, cells, None)
            rows.append(_with_groups(row, (n, a[n]), (ref, a[ref]), (n, b[n]), (ref, b[ref])))
    elif form == "difference":
        for n in _pick(set(a) & set(b), claim.at):
            cells = [(1.0, seed_values(a[n], endpoint)), (-1.0, seed_values(b[n], endpoint))]
            row = _t_row(claim, f"{claim.a} − {base} at N={n}", endpoint, cells, None)
            rows.append(_with_groups(row, (n, a[n]), (n, b[n])))
    else:  # collapse
        for n in _pick(set(a) & set(b), claim.at):
            row = _collapse_row(claim, f"collapsed runs: {claim.a} vs {base} at N={n}", a[n], b[n])
            rows.append(_with_groups(row, (n, a[n]), (n, b[n])))
    return rows or [_empty(claim, f"{claim.a} vs {base}", endpoint, "no N at which both ran")]


def _with_groups(row: dict, *groups: tuple[int, dict]) -> dict:
    return {
        **row,
        "groups": [{"label": g["label"], "staleness": n, "seeds": len(g.get("per_seed") or [])} for n, g in groups],
    }


def planned_at(planned: dict[int | None, int] | None, n: int) -> int | None:
    """The planned seeds of a group at staleness `n`: planned[n], else planned[None] (every N), else None."""
    if not planned:
        return None
    return planned.get(n, planned.get(None))


def _short_of_plan(row: dict, planned: dict[int | None, int] | None) -> list[str]:
    """The row's groups with fewer seeds than planned, as "label N=n: k of K seeds"."""
    out = []
    for g in row.get("groups") or []:
        k = planned_at(planned, g["staleness"])
        if k is not None and g["seeds"] < k:
            out.append(f"{g['label']} N={g['staleness']}: {g['seeds']} of {k} seeds")
    return list(dict.fromkeys(out))


def _decide(row: dict, alpha: float) -> str:
    if row["p_adjusted"] is None or row["p_adjusted"] >= alpha:
        return row["verdict"]
    above = row["estimate"] > row["boundary"]
    if row["form"] == "collapse":
        return SUPPORTED if row["estimate"] < 0 else CONTRADICTED
    return SUPPORTED if above == (row["form"] in GREATER_FORMS) else CONTRADICTED


def _power(row: dict, alpha: float, power: float) -> dict:
    """The minimum detectable |effect − boundary| at the row's n, and the seeds that would resolve the observed
    effect at the observed spread (None: more than stats.MAX_SEEDS, or nothing to resolve)."""
    if row["p"] is None:
        return row
    if row["form"] == "collapse":
        ka, kb = row["counts"]
        na, nb = row["n"]
        return {**row, "seeds_needed": runs_to_resolve(ka / na, kb / nb, alpha, power)}
    if row["se"] is None or row["df"] is None:
        return row
    mde = detectable_ncp(row["df"], alpha, power) * row["se"]
    n = row["n"] if isinstance(row["n"], int) else min(row["n"])
    sd = row["sd"] if row["sd"] is not None else row["se"] * n**0.5
    needed = seeds_to_resolve(row["estimate"] - row["boundary"], sd, alpha, power)
    return {**row, "mde": mde, "seeds_needed": needed}


def _planned_n(claim: Claim, plan: dict[int | None, int] | None) -> bool:
    """The plan promises data for the claim: it lists its N, and each has planned seeds."""
    return isinstance(claim.at, list) and bool(claim.at) and all(planned_at(plan, n) for n in claim.at)


def _runs_arms(claim: Claim, groups: Sequence[dict], labels: set[str]) -> bool:
    """Every arm the claim compares is in the study (at some N): a claim about an arm never run is not pending."""
    arms = [claim.a, *_baselines(claim, groups)]
    return all(a in labels for a in arms)


def _planned_runs(claim: Claim, row: dict, plan: dict[int | None, int] | None) -> list[int] | None:
    """Runs per arm of a collapse row at the plan: each group's planned seeds, or its runs where more or none
    planned; for a row without data, the plan at the claim's one listed N (None: not known before the data)."""
    if row.get("groups"):
        return [max(g["seeds"], planned_at(plan, g["staleness"]) or 0) for g in row["groups"]]
    if _planned_n(claim, plan) and len(claim.at) == 1:
        return [planned_at(plan, claim.at[0])] * 2
    return None


def _attainable(row: dict, runs: list[int] | None, alpha: float) -> dict:
    """A collapse row's design check. Counts of a few runs can give only a few p-values: `best_p` is the
    smallest any outcome could give at `runs` per arm, and where it is not below `alpha` (Holm's strictest
    level for the whole family at the plan) no outcome can resolve the row; the note says so and how many runs
    per arm could. Known before any run where the plan and the claim's N are."""
    if not runs or min(runs) < 1:
        return row
    best = float(collapse_pvalues(*runs).min())
    if best < alpha:
        return {**row, "best_p": best}
    need = runs_to_resolve_at_best(alpha)
    can = f"{need} runs per arm can" if need else f"more than {MAX_RUNS} runs per arm would be needed"
    cannot = (
        f"cannot come out either way at {' and '.join(map(str, runs))} runs per arm: the most lopsided outcome "
        f"gives p = {best:.3f}, not below Holm's strictest level {alpha:.4f} ({can})"
    )
    return {**row, "best_p": best, "undecidable": cannot, "note": "; ".join(filter(None, [cannot, row["note"]]))}


def judge(groups: Sequence[dict], claims: ClaimsFile, planned: dict[int | None, int] | None = None) -> list[dict]:
    """One row per claim and comparison, with "claim", "form", "comparison", "endpoint", "margin", "estimate",
    "low", "high", "n", "method", "p", "p_adjusted", "mde", "seeds_needed", "groups", "verdict" (supported /
    contradicted / not resolved / interim / no data) and a "note"; the family is every row with a p-value.
    `planned` ({N: seeds}, None: every N) overrides the claims file's `planned_seeds`."""
    plan = claims.planned(planned)
    pairs = [(c, r) for c in claims.claims for r in _rows_for(c, groups, claims.endpoint)]
    # a row the plan promises data for (its claim lists its N, each planned) but that has none yet is in the
    # family at p = 1: Holm's adjusted p of the others can only fall when its data arrive, so a row resolved
    # now stays resolved, and one not resolved waits (interim) instead of being judged in a smaller family. A row
    # short of its planned seeds counts at p = 1 too: its p moves as seeds arrive, and Holm's adjusted p of every
    # other row rises with it, so only the bound p = 1 keeps a resolved row resolved at the plan.
    labels = {g["label"] for g in groups}
    pending = [r["p"] is None and _planned_n(c, plan) and _runs_arms(c, groups, labels) for c, r in pairs]
    shortfalls = [_short_of_plan(r, plan) for _, r in pairs]  # each row's groups with fewer seeds than planned
    short_rows = [r["p"] is not None and bool(s) for (_, r), s in zip(pairs, shortfalls)]
    adjusted = holm([1.0 if wait or short else r["p"] for (_, r), wait, short in zip(pairs, pending, short_rows)])
    m = sum(p is not None for p in adjusted)
    waiting, short_count = sum(pending), sum(short_rows)
    out = []
    for (c, r), p_adj, wait, is_short, shortfall in zip(pairs, adjusted, pending, short_rows, shortfalls):
        r = {**r, "p_adjusted": None if wait or is_short else p_adj, "pending": wait, "short": is_short}
        r["verdict"] = _decide(r, claims.alpha)
        r = _power(r, claims.alpha / max(m, 1), claims.power)
        if r["form"] == "collapse":  # at the plan every row has data: the family is all of them
            r = _attainable(r, _planned_runs(c, r, plan), claims.alpha / len(pairs))
        if shortfall and r["verdict"] != NO_DATA:
            r["verdict"] = INTERIM
            r["note"] = "; ".join(filter(None, [f"interim, not judged: {', '.join(shortfall)}", r["note"]]))
        elif r["verdict"] == UNRESOLVED and r["p"] is not None and (waiting or short_count):
            r["verdict"] = INTERIM
            why = [
                f"{waiting} planned row(s) of the family have no data yet" if waiting else "",
                f"{short_count} row(s) of the family are short of their planned seeds" if short_count else "",
            ]
            note = f"interim, not judged: {', '.join(filter(None, why))} (counted at p = 1)"
            r["note"] = "; ".join(filter(None, [note, r["note"]]))
        elif r["verdict"] != UNRESOLVED:
            r["seeds_needed"] = None  # resolved: nothing more to resolve
        out.append(r)
    return out


def undecidable(
    runs: Sequence[tuple[str, int, int]], claims: ClaimsFile, planned: dict[int | None, int] | None = None
) -> list[str]:
    """Before anything trains: the claims that no outcome could resolve, from the runs to come alone ((label, N,
    seeds) per group) and the plan, one line each (the collapse design check of `_attainable`)."""
    groups = [
        {"label": label, "staleness": n, "per_seed": [{"seed": s} for s in range(k)], "collapse": []}
        for label, n, k in runs
    ]
    return [
        f"claim {r['claim']!r} ({r['comparison']}): {r['undecidable']}"
        for r in judge(groups, claims, planned)
        if r.get("undecidable")
    ]
