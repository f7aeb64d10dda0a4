"""Typed settings: the strict pydantic base of every config section, and its errors as one line.

    class TrainerConfig(Section):
        lr: float = Field(1e-6, gt=0, le=1)

A `Section` rejects unknown keys, converts nothing silently (no '3' → 3, no 1.5 → 1, no 1 → true)
and never accepts NaN or ±inf; ranges are field constraints. `user_error` turns pydantic's
`ValidationError` into the project's one-line `UserError`: `<source>: <dotted.key>: expected <what>,
got <value>`, where <what> is read off the field's type and bounds (`an integer in [1, 4096]`).
"""

from __future__ import annotations

import re
import reprlib
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from .errors import UserError

CHECK = "vespo_check"  # error type of the checks written by hand (`fail`)


class Section(BaseModel):
    """A config section: unknown keys rejected, strict types, finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def fail(message: str, field: str = "") -> PydanticCustomError:
    """An error for a validator to raise: `message` as written, about `field` of the model (if given)."""
    return PydanticCustomError(CHECK, "{message}", {"message": message, "field": field})


# --------------------------------------------------------------------------- reading the types


def _strip(tp: Any) -> tuple[Any, list, bool]:
    """(base type, constraint metadata, nullable) of an annotation such as Optional[Annotated[int, Field(ge=1)]]."""
    meta: list = []
    nullable = False
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            meta += [m for x in tp.__metadata__ for m in getattr(x, "metadata", [x])]
            tp = tp.__origin__
        elif typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            nullable = True
            if len(args) != 1:
                return Union[tuple(args)], meta, nullable  # noqa: UP007 (a runtime union of computed args)
            tp = args[0]
        else:
            return tp, meta, nullable


def _models(tp: Any) -> list[type[BaseModel]]:
    """The models of a model type or of a union of models (a discriminated union), else []."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in args):
            return list(args)
    return []


def _tag(model: type[BaseModel]) -> str | None:
    """The discriminator value of a union member (its `objective: Literal[...]` field), if any."""
    field = model.model_fields.get("objective")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if field and typing.get_origin(field.annotation) is Literal and len(args) == 1 else None


class Where(typing.NamedTuple):
    """A location in a model: the dotted key a user writes, and the type and bounds found there."""

    key: str
    tp: Any  # None: no such field
    meta: list
    nullable: bool
    owner: type[BaseModel] | None  # the model holding the last key


def locate(model: type[BaseModel], loc: tuple) -> Where:
    """Follow pydantic's error location `loc` through `model`'s fields (union tags are skipped)."""
    tp: Any = model
    meta: list = []
    nullable = False
    owner: type[BaseModel] | None = None
    key = ""
    for part in loc:
        base, _, _ = _strip(tp)
        models = _models(base)
        if len(models) > 1:  # a discriminated union: `part` is the tag pydantic inserts
            member = next((c for c in models if _tag(c) == part), None)
            if member is None:
                return Where(key, None, [], False, owner)
            tp, meta = member, []
        elif models:
            owner = models[0]
            field = owner.model_fields.get(part) if isinstance(part, str) else None
            key = f"{key}.{part}" if key else str(part)
            if field is None:
                return Where(key, None, [], False, owner)
            tp, meta, nullable = field.annotation, list(field.metadata), False
        elif typing.get_origin(base) in (list, tuple) and isinstance(part, int):
            key += f"[{part}]"
            tp, meta, nullable = (typing.get_args(base) or (Any,))[0], [], False
        elif typing.get_origin(base) is dict:
            key = f"{key}.{part}"
            tp, meta, nullable = (typing.get_args(base) or (Any, Any))[-1], [], False
        else:  # deeper than the types go
            return Where(f"{key}.{part}" if key else str(part), None, [], False, owner)
    base, m, null = _strip(tp)
    return Where(key, base, meta + m, nullable or null, owner)


def bounds(meta: list) -> tuple[float | None, bool, float | None, bool]:
    """(low, low inclusive, high, high inclusive) of a field's constraints; None where unbounded."""
    lo = hi = None
    lo_in = hi_in = True
    for m in meta:
        if isinstance(m, at.Ge):
            lo, lo_in = m.ge, True
        elif isinstance(m, at.Gt):
            lo, lo_in = m.gt, False
        elif isinstance(m, at.Le):
            hi, hi_in = m.le, True
        elif isinstance(m, at.Lt):
            hi, hi_in = m.lt, False
    return lo, lo_in, hi, hi_in


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else repr(float(x))


def describe(tp: Any, meta: list, nullable: bool = False) -> str:
    """What a field accepts, in words: `an integer in [1, 4096]`, `one of 'vllm', 'hf' (or null)`."""
    tail = " (or null)" if nullable else ""
    if tp is bool:
        return "true or false" + tail
    if tp in (int, float):
        lo, lo_in, hi, hi_in = bounds(meta)
        what = "an integer" if tp is int else "a float"
        if lo is not None and hi is not None:
            what += f" in {'[' if lo_in else '('}{_num(lo)}, {_num(hi)}{']' if hi_in else ')'}"
        elif lo is not None:
            what += f" {'>=' if lo_in else '>'} {_num(lo)}"
        elif hi is not None:
            what += f" {'<=' if hi_in else '<'} {_num(hi)}"
        return what + tail
    if tp is str:
        return "a string" + tail
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp)) + tail
    if typing.get_origin(tp) in (list, tuple):
        n_min = next((m.min_length for m in meta if isinstance(m, at.MinLen)), None)
        n_max = next((m.max_length for m in meta if isinstance(m, at.MaxLen)), None)
        if n_min is not None and n_min == n_max:
            item = describe_type(typing.get_args(tp)[0]) if typing.get_args(tp) else "anything"
            return f"a list of {n_min} items, each {item}" + tail
        return "a list" + tail
    if typing.get_origin(tp) is dict or _models(tp):
        return "a mapping" + tail
    return getattr(tp, "__name__", str(tp)) + tail


def describe_type(tp: Any) -> str:
    """`describe` of an annotation such as Annotated[float, Field(gt=1)]."""
    return describe(*_strip(tp))


def numeric_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any, list]]:
    """(dotted key, int or float, constraints) of every number in `model`, nested sections and list
    items included (a list of numbers is reported as its key with the item's type and bounds)."""
    for name, field in model.model_fields.items():
        base, meta, _ = _strip(field.annotation)
        meta = list(field.metadata) + meta
        if typing.get_origin(base) in (list, tuple):
            base, meta, _ = _strip(typing.get_args(base)[0])
        if base in (int, float):
            yield prefix + name, base, meta
        elif len(_models(base)) == 1:
            yield from numeric_fields(base, f"{prefix}{name}.")


# --------------------------------------------------------------------------- errors


_BOUNDED = reprlib.Repr()  # a container's repr cut short while it is built: a YAML alias bomb has 9^10 leaves
_BOUNDED.maxlevel, _BOUNDED.maxlist, _BOUNDED.maxdict, _BOUNDED.maxstring, _BOUNDED.maxother = 3, 6, 6, 80, 80


def _show(value: Any) -> str:
    text = _BOUNDED.repr(value) if isinstance(value, (list, tuple, dict, set)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def message(model: type[BaseModel], err: dict) -> tuple[str, str]:
    """(dotted key, `expected …, got …` text) of one pydantic error against `model`."""
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == CHECK:
        if ctx.get("field"):
            loc = loc + tuple(ctx["field"].split("."))
        return locate(model, loc).key, ctx["message"]
    where = locate(model, loc)
    if err["type"] == "extra_forbidden":
        known = sorted(
            k for k in (where.owner.model_fields if where.owner else {}) if not where.owner.model_fields[k].exclude
        )
        tag = _tag(where.owner) if where.owner else None
        if tag:
            return where.key, f"unknown parameter of {tag} (known: {', '.join(known) or 'none'})"
        return where.key, f"unknown key (expected one of: {', '.join(known)})"
    if where.tp is None:
        return where.key, err["msg"]
    return where.key, f"expected {describe(where.tp, where.meta, where.nullable)}, got {_show(err['input'])}"


def user_error(
    exc: ValidationError, model: type[BaseModel], source: Callable[[str], str] | None = None, prefix: str = ""
) -> UserError:
    """The first error of `exc` as one line: `<source(key)>: <prefix><key>: expected …, got …`."""
    key, text = message(model, exc.errors(include_url=False)[0])
    key = prefix + key
    text = re.sub(r"\s+", " ", text)
    return UserError(f"{source(key)}: {key}: {text}" if source else f"{key}: {text}")
