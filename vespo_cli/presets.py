"""Presets as YAML: finding them, reading them (`extends:` chains), merging layers and `--set` items.

Plain data only (no pydantic, no torch): `vespo presets` lists and describes presets from here; the
typed config (`config.py`) validates what `resolve` merged. Every mapping is merged with `origin`,
dotted key → the file or `--set` item that set it, so a bad value is reported where it was written.
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def _presets_dir() -> Path:
    """Where presets are read from: $VESPO_PRESETS, else the copy shipped in an installed wheel
    (`vespo_cli/_presets`, see setup.py), else the checkout's top-level `presets/`."""
    if os.environ.get("VESPO_PRESETS"):
        return Path(os.environ["VESPO_PRESETS"])
    shipped = files("vespo_cli") / "_presets"
    if isinstance(shipped, Path) and shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parent.parent / "presets"


PRESETS_DIR = _presets_dir()


def preset_path(name_or_path: str, kind: str = "") -> Path:
    """`tiny` → presets/tiny.yaml; `vespo` with kind="algorithms" → presets/algorithms/vespo.yaml."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise UserError(f"{name_or_path}: preset file not found")
        return p
    p = PRESETS_DIR / kind / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(list_presets(kind)) or "none"
        what = "algorithm preset" if kind else "preset"
        raise UserError(f"{name_or_path}: unknown {what} (known: {known})")
    return p


def list_presets(kind: str = "") -> list[str]:
    return sorted(p.stem for p in (PRESETS_DIR / kind).glob("*.yaml"))


def preset_name(preset: str) -> str:
    """`tiny` → tiny, `presets/mine.yaml` → mine."""
    return Path(preset).stem if Path(preset).suffix in (".yaml", ".yml") else Path(preset).name


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) with YAML 1.2's exponent floats: `1e-6` is a float, not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    """One YAML document through `_Loader`, a SafeLoader: no python tags (what yaml.safe_load does,
    with the loader above)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML file ({} when empty); one-line UserError naming the file otherwise."""
    try:
        data = _yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r})") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def layers(path: Path, kind: str = "", seen: tuple = ()) -> list[tuple[str, dict]]:
    """The `extends:` chain of a preset file, base first, as (source, mapping) layers."""
    if path.resolve() in seen:
        chain = " -> ".join(str(s) for s in seen + (path.resolve(),))
        raise UserError(f"{path}: extends: cycle ({chain})")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    out: list[tuple[str, dict]] = []
    if parent is not None:
        if not isinstance(parent, str):
            raise UserError(f"{path}: extends: expected a preset name or path, got {parent!r}")
        rel = path.parent / parent
        try:
            parent_path = rel if rel.is_file() else preset_path(parent, kind)
        except UserError as e:
            raise UserError(f"{path}: extends: {e}") from None
        out = layers(parent_path, kind, seen + (path.resolve(),))
    return out + [(str(path), data)]


def preset_description(path: Path) -> str:
    """The `description:` of a preset, following `extends:` if it has none of its own."""
    try:
        for _, layer in reversed(layers(path, "algorithms" if path.parent.name == "algorithms" else "")):
            if layer.get("description"):
                return str(layer["description"])
    except UserError as e:
        return f"(invalid: {e})"
    return ""


def _set_origin(origin: dict, dotted: str, source: str) -> None:
    origin.pop(dotted, None)  # insertion order = the order values were last set (see validate)
    origin[dotted] = source


def merge(dst: dict, src: dict, origin: dict, source: str, prefix: str = "") -> None:
    """Deep-merge `src` into `dst`, recording the source of every leaf (and section) in `origin`.

    `params` mappings merge one level (key by key) and their values are replaced whole."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key == "params":
            base = dst.get(key) if isinstance(dst.get(key), dict) else {}
            dst[key] = {**base, **value}
            _set_origin(origin, dotted, source)
            for sub in value:
                _set_origin(origin, f"{dotted}.{sub}", source)
        elif isinstance(value, dict):
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
            _set_origin(origin, dotted, source)
            merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = value
            _set_origin(origin, dotted, source)


def parse_override(item: str) -> tuple[str, Any]:
    """`trainer.lr=3e-6` → ("trainer.lr", 3e-6); the value is YAML (so `[1, 2]`, `null`, `true` work)."""
    if "=" not in item:
        raise UserError(f"--set {item}: expected KEY=VALUE, e.g. trainer.lr=1e-6")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item}: expected a dotted key like trainer.lr")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key, value


def nest(key: str, value: Any) -> dict:
    """`a.b.c`, v → {"a": {"b": {"c": v}}}."""
    out: dict = {}
    cur = out
    parts = key.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def resolve(preset: str | None, algo: str | None) -> tuple[dict, dict[str, str]]:
    """The run preset (+ its extends chain) with the algorithm preset merged into `algorithm`:
    (merged mapping, origin). `--set` items are applied by the caller (`config.load_config`)."""
    merged: dict = {}
    origin: dict[str, str] = {}
    if preset:
        for source, layer in layers(preset_path(preset)):
            merge(merged, layer, origin, source)
        merged.setdefault("preset", preset_name(preset))
    if algo:
        objective_set = False
        for source, layer in layers(preset_path(algo, "algorithms"), "algorithms"):
            # an algorithm preset that names its objective replaces the params wholesale (never mixes
            # two objectives); a layer that only tunes params (e.g. one extending another algorithm
            # preset with the same objective) merges them key by key.
            if "objective" in layer:
                if not isinstance(merged.get("algorithm"), dict):
                    merged["algorithm"] = {}
                if not objective_set or layer["objective"] != merged["algorithm"].get("objective"):
                    merged["algorithm"]["params"] = {}
                objective_set = True
            merge(merged, {"algorithm": layer}, origin, source)
        merge(merged, {"algorithm": {"name": preset_name(algo)}}, origin, f"--algo {algo}")
    return merged, origin
