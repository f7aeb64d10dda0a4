"""What a run is called in a compare: its algorithm preset and the algorithm fields it overrides
(`vespo`, `vespo+length_norm=sqrt`), read from the run's config.yaml `algorithm` section.

The preset is the recorded one (`algorithm.name`, where the config records it), else the shipped
algorithm preset with the run's objective and the same description, else the one of that objective
that the run differs from in the fewest fields (ties: the preset named after the objective).
A field the run's section does not set counts as the preset's value.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

RUN_NAME = re.compile(r"^(?P<label>.+)-N(?P<n>\d+)-s(?P<seed>\d+)$")  # the runs compare trains
ALGO_KEYS = ("correction", "correction_cap", "routing_replay", "aggregation")  # algorithm fields besides params
ALGO_DEFAULTS = {"correction": None, "correction_cap": 2.0, "routing_replay": False, "aggregation": None}


def join_label(name: str, parts: list[str]) -> str:
    """`name+key=value+...`, with characters outside [A-Za-z0-9._=+-] replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "+".join([name] + parts))


def format_value(v: Any) -> str:
    """A config value as it is written in a label: YAML words for None and booleans, %g for floats."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


def algorithm_presets() -> dict[str, dict]:
    """{name: resolved algorithm section} of every algorithm preset in presets/algorithms/."""
    from .. import presets

    return _presets_in(str(presets.PRESETS_DIR))


@lru_cache(maxsize=4)
def _presets_in(root: str) -> dict[str, dict]:
    from ..config import list_presets, load_config, to_dict
    from ..errors import UserError

    out = {}
    for name in list_presets("algorithms"):
        try:
            out[name] = to_dict(load_config(None, name).algorithm)
        except UserError:  # a broken preset describes no run; `vespo presets` reports it
            continue
    return out


def _fields(section: dict) -> dict[str, Any]:
    """The section's params and algorithm fields as one flat mapping (only the keys it sets)."""
    params = section.get("params") if isinstance(section.get("params"), dict) else {}
    return {**params, **{k: section[k] for k in ALGO_KEYS if k in section}}


def overrides_against(section: dict, preset: dict) -> dict[str, Any]:
    """{key: value} of the fields the run sets to something other than the preset's value."""
    base = {**ALGO_DEFAULTS, **_fields(preset)}
    return {k: v for k, v in _fields(section).items() if k not in base or base[k] != v}


def _reference(section: dict, presets: dict[str, dict]) -> str | None:
    """The algorithm preset a run's section is described against (see the module docstring)."""
    recorded = section.get("name")
    if isinstance(recorded, str) and recorded in presets:
        return recorded
    objective = section.get("objective")
    same = [n for n, p in presets.items() if p.get("objective") == objective]
    description = section.get("description")
    described = [n for n in same if description and presets[n].get("description") == description]
    if described:
        return described[0]
    return min(same, key=lambda n: (len(overrides_against(section, presets[n])), n != objective, n), default=None)


def describe_algorithm(section: dict | None, presets: dict[str, dict] | None = None) -> dict:
    """{"label", "name", "overrides", "objective", "params", "correction", "correction_cap",
    "routing_replay"} of a run's algorithm section: the preset it is described against, the fields it
    overrides, and the resulting values (the preset's where the run sets none)."""
    section = section if isinstance(section, dict) else {}
    presets = algorithm_presets() if presets is None else presets
    name = _reference(section, presets)
    preset = presets.get(name, {}) if name else {}
    overrides = overrides_against(section, preset)
    fields = {**ALGO_DEFAULTS, **_fields(preset), **_fields(section)}
    params = {k: v for k, v in fields.items() if k not in ALGO_KEYS}
    name = name or str(section.get("objective") or "unknown")
    return {
        "label": join_label(name, [f"{k}={format_value(v)}" for k, v in overrides.items()]),
        "name": name,
        "overrides": overrides,
        "objective": section.get("objective", preset.get("objective")),
        "params": params,
        **{k: fields[k] for k in ALGO_KEYS},
    }


def _without_seed(config: dict | None) -> str:
    """A run's config with trainer.seed left out, as comparable text: runs that differ only in
    their seed are seeds of one group."""
    import json

    config = dict(config or {})
    config["trainer"] = {k: v for k, v in (config.get("trainer") or {}).items() if k != "seed"}
    return json.dumps(config, sort_keys=True, default=str)


def _path_tags(paths: list) -> list[str]:
    """For each path, the path component nearest its end that is not the same in all of `paths`."""
    parts = [p.parts for p in paths]
    for i in range(1, max(len(p) for p in parts) + 1):
        at = [p[-i] if len(p) >= i else "" for p in parts]
        if len(set(at)) > 1:
            return [a or "/" for a in at]
    return [str(p) for p in paths]


def disambiguate(specs: list) -> None:
    """Existing run directories that share a label and N but not their config (seed aside), or that
    repeat a seed, get the path component that tells them apart: `vespo (a)`, `vespo (b)`. Runs that
    compare trains are never renamed; a compare directory's runs are told apart by that directory."""
    by_key: dict[tuple, list] = {}
    for s in specs:
        by_key.setdefault((s.label, s.staleness), []).append(s)
    for members in by_key.values():
        classes: dict[str, list] = {}
        for s in members:
            classes.setdefault(_without_seed(s.config), []).append(s)
        if len(classes) == 1 and len({s.seed for s in members}) == len(members):
            continue
        if any(len({s.seed for s in c}) < len(c) for c in classes.values()):
            classes = {str(s.path): [s] for s in members}  # the same config twice: each directory alone
        reps = [_representative([s.path for s in c]) for c in classes.values()]
        for c, tag in zip(classes.values(), _path_tags(reps)):
            for s in c:
                if s.algo is None:
                    s.label = f"{s.label} ({tag})"


def _representative(paths: list):
    """Where a class of runs lives: their common directory; for runs a compare trained
    (`OUT/runs/<label>-N<N>-s<seed>`), the common directory of their OUTs."""
    import os
    from pathlib import Path

    paths = [Path(p).resolve() for p in paths]
    if all(p.parent.name == "runs" and RUN_NAME.match(p.name) for p in paths):
        paths = [p.parent.parent for p in paths]
    return Path(os.path.commonpath([str(p) for p in paths]))
