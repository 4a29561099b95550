"""The base of every typed spec (bundle manifest, device config, panel settings) and the one
way their validation errors are worded.

Specs are frozen pydantic models in strict mode: unknown keys are refused, a JSON/TOML ``true``
is not an integer, a string is not a number, NaN and infinities are refused, and arrays become
tuples only where a field declares a tuple. :func:`problems` turns a ``ValidationError`` into
one line per problem, each naming the key path, what was expected and what was found.

Example:
    >>> class Camera(Spec):
    ...     width: int = Field(640, ge=8, description="frame width")
    >>> try:
    ...     Camera.model_validate({"width": True, "hight": 3})
    ... except ValidationError as exc:
    ...     print("\\n".join(problems(exc, Camera, "[camera].")))
    [camera].width: expected a valid integer, found boolean True
    [camera].hight: unknown key; expected one of width
"""
from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError  # noqa: F401 (re-exported)

__all__ = ["Spec", "Field", "ValidationError", "problems", "type_name", "IntPair", "IntQuad", "FloatPair",
           "Record"]


class Spec(BaseModel):
    """Frozen, strict, closed: the base of every typed spec."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False,
                              validate_default=False, protected_namespaces=())


def _as_tuple(v: Any) -> Any:
    """Arrays (JSON/TOML lists) and numpy integers become a tuple of plain ints/floats; the
    strict element types then refuse booleans, strings and fractions where ints are declared."""
    if isinstance(v, list):
        v = tuple(v)
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    return v


def _plain(x: Any) -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        return x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


def _n_tuple(n: int, what: str):
    def check(v: Any) -> Any:
        if isinstance(v, (list, tuple)) and len(v) != n:
            raise ValueError(f"expected {what}, found {list(v)!r}")
        return _as_tuple(v)
    return BeforeValidator(check)


IntPair = Annotated[tuple[int, int], _n_tuple(2, "2 integers")]
IntQuad = Annotated[tuple[int, int, int, int], _n_tuple(4, "4 integers")]
FloatPair = Annotated[tuple[float, float], _n_tuple(2, "2 numbers")]
#: A free-form JSON object: provenance kept for people (never read by a decision).
Record = dict[str, Any]


def type_name(v: Any) -> str:
    """The value's kind in the words of a config or JSON file."""
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", tuple: "array",
            dict: "table", type(None): "null"}.get(type(v), type(v).__name__)


def _short(v: Any, limit: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[:limit - 1] + "…"


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc`` (for listing the keys it accepts)."""
    for part in loc[:-1]:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = next((a for a in _flatten(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _flatten(ann: Any):
    yield ann
    for a in typing.get_args(ann):
        yield from _flatten(a)


def _key(loc: tuple, prefix: str) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    if prefix == "[" and parts:              # TOML style: [section].key.sub
        return f"[{parts[0]}]" + "".join(f".{p}" for p in parts[1:])
    return (prefix + ".".join(parts)).rstrip(".")


_WORDS = (("greater than or equal to ", ">= "), ("less than or equal to ", "<= "), ("greater than ", "> "),
          ("less than ", "< "))


def problems(exc: ValidationError, model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """One line per error: ``key: expected …, found <kind> <value>``.

    Args:
        model: the validated model, to list the accepted keys when an unknown one is found.
        prefix: put before every key path; ``"["`` alone formats the first part as a TOML section.
    """
    out = []
    for e in exc.errors(include_url=False):
        loc, kind, found = tuple(e["loc"]), e["type"], e.get("input")
        key = _key(loc, prefix) or "(document)"
        if kind == "extra_forbidden":
            holder = _model_at(model, loc)
            known = f"; expected one of {', '.join(holder.model_fields)}" if holder else ""
            out.append(f"{key}: unknown key{known}")
            continue
        if kind == "missing":
            out.append(f"{key}: required key missing")
            continue
        msg = e["msg"]
        for lead in ("Input should be ", "Value error, ", "Assertion failed, "):
            if msg.startswith(lead):
                msg = ("expected " if lead == "Input should be " else "") + msg[len(lead):]
        for a, b in _WORDS:
            msg = msg.replace("expected " + a, "expected " + b)
        if kind == "string_too_short":
            msg = "expected a non-empty string"
        if kind.endswith("_type") or kind in ("finite_number", "greater_than_equal", "less_than_equal",
                                              "greater_than", "less_than", "literal_error", "too_short",
                                              "too_long", "string_pattern_mismatch", "enum", "string_too_short"):
            msg += f", found {type_name(found)} {_short(found)}"
        out.append(f"{key}: {msg}")
    return out
