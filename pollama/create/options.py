"""Ollama's model options (`api.Options` and `api.Runner` JSON names) and PARAMETER values.

The set is the engine-era one (`api/types.go` at f63eea3d2, see ollama-facts.md §1.2), plus
HEAD's `draft_num_predict` (HEAD also made `main_gpu` a pointer; not here). Ollama's drafts
come from a second model and the option is load-time; pollama's come from prompt lookup
(runner/speculative.py) and it is read per request.

A Modelfile `PARAMETER name value` is typed the way Ollama's `api.FormatParams` types it:
ints with `strconv.ParseInt(s, 10, 64)`, floats with `strconv.ParseFloat(s, 32)` (so a
float is rounded to float32), bools with `strconv.ParseBool`, and `stop` is a list that
repeated lines extend. Go's parsers are stricter than Python's `int()`/`float()` (no
surrounding spaces, no underscores in ints, ...), and a value Python would take but Go
would not must be refused here too, or the same Modelfile would build in one and not the
other.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from pollama.envconfig import DEFAULT_NUM_BATCH


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its JSON name, Python type, engine-era default, and whether it is load-time."""

    name: str
    type: type  # int, float, bool or list (of str)
    default: Any  # None where Ollama decides at load time (num_ctx, use_mmap)
    load_time: bool = False  # an `api.Runner` option: changing it reloads the model


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        # api.Options: read per request by the sampler and the runner loop.
        Option("num_keep", int, 4),
        Option("seed", int, -1),
        Option("num_predict", int, -1),
        Option("top_k", int, 40),
        Option("top_p", float, 0.9),
        Option("min_p", float, 0.0),
        Option("typical_p", float, 1.0),
        Option("repeat_last_n", int, 64),
        Option("temperature", float, 0.8),
        Option("repeat_penalty", float, 1.1),  # engine era; HEAD defaults to 1.0
        Option("presence_penalty", float, 0.0),
        Option("frequency_penalty", float, 0.0),
        Option("stop", list, []),
        # Speculative decoding: the most draft tokens a step (greedy requests; 0 = off).
        # POLLAMA_DRAFT_NUM_PREDICT sets the server's default; HEAD's default is 4.
        Option("draft_num_predict", int, 10),
        # api.Runner: fixed when the model is loaded.
        Option("num_ctx", int, None, load_time=True),  # OLLAMA_CONTEXT_LENGTH or a VRAM tier
        Option("num_batch", int, DEFAULT_NUM_BATCH, load_time=True),
        Option("num_gpu", int, -1, load_time=True),  # -1: as many layers as fit
        Option("main_gpu", int, 0, load_time=True),
        Option("use_mmap", bool, None, load_time=True),  # *bool in Go: unset means "decide"
        Option("num_thread", int, 0, load_time=True),  # 0: let the runtime decide
    )
}

# Names Ollama still accepts in a Modelfile: `ollama create` prints
# "warning: parameter X is deprecated" and drops them without looking at the value.
DEPRECATED_OPTIONS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)


class OptionError(ValueError):
    """A PARAMETER name Ollama does not know, or a value its type cannot take."""


def parse_parameter(name: str, value: str) -> Any:
    """Type one PARAMETER value as Ollama does; `stop` gives a one-item list."""
    option = OPTIONS.get(name)
    if option is None:
        raise OptionError(f"unknown parameter '{name}'")
    if option.type is list:
        return [value]
    parse = {int: parse_go_int, float: parse_go_float32, bool: parse_go_bool}[option.type]
    try:
        return parse(value)
    except ValueError as e:
        kind = option.type.__name__
        raise OptionError(f"invalid {kind} value {value!r} for parameter '{name}': {e}") from None


def collect_parameters(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Type (name, value) pairs in order: lists extend, a repeated scalar keeps the last value.

    Deprecated names are dropped, as `ollama create` drops them (after a warning).
    """
    params: dict[str, Any] = {}
    for name, value in pairs:
        if name in DEPRECATED_OPTIONS:
            continue
        typed = parse_parameter(name, value)
        if isinstance(typed, list) and isinstance(params.get(name), list):
            params[name] = params[name] + typed
        else:
            params[name] = typed
    return params


# --- Go's strconv, as far as FormatParams uses it ----------------------------------------

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def parse_go_int(text: str) -> int:
    """`strconv.ParseInt(text, 10, 64)`: optional sign and ASCII digits only."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError("not an integer")
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError("out of the int64 range")
    return value


_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


def parse_go_bool(text: str) -> bool:
    """`strconv.ParseBool`: 1/t/T/TRUE/true/True or 0/f/F/FALSE/false/False, nothing else."""
    try:
        return _GO_BOOLS[text]
    except KeyError:
        raise ValueError("not one of 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False") from None


# Go's float literal syntax: an underscore may only sit between two digits (or after 0x).
_DEC = r"[0-9](?:_?[0-9])*"
_HEX = r"[0-9a-fA-F](?:_?[0-9a-fA-F])*"
_DECIMAL_FLOAT = re.compile(rf"([+-]?)(?:({_DEC})(?:\.({_DEC})?)?|\.({_DEC}))(?:[eE]([+-]?{_DEC}))?")
_HEX_FLOAT = re.compile(rf"([+-]?)0[xX](?:_?({_HEX})(?:\.({_HEX})?)?|\.({_HEX}))[pP]([+-]?{_DEC})")
_SPECIAL_FLOAT = re.compile(r"[+-]?(?:inf|infinity)|nan", re.IGNORECASE)

_FLOAT32_MAX = Fraction((2**24 - 1) * 2**104)


def parse_go_float32(text: str) -> float:
    """`strconv.ParseFloat(text, 32)` for finite values, as the float JSON would carry.

    The exact decimal (or hex) value is rounded once to float32, as Go does, and returned
    as the shortest decimal that identifies that float32 (0.1, not 0.10000000149...), which
    is what Go writes when it marshals the float32 into the model's params JSON.
    Inf and NaN parse in Go but cannot be marshalled to JSON, so `ollama create` fails on
    them; they are refused here.
    """
    if _SPECIAL_FLOAT.fullmatch(text):
        raise ValueError("not a finite number")
    if m := _DECIMAL_FLOAT.fullmatch(text):
        sign, whole, frac, only_frac, exp = m.groups()
        digits = ((whole or "") + (frac or only_frac or "")).replace("_", "")
        exp10 = int((exp or "0").replace("_", "")) - len((frac or only_frac or "").replace("_", ""))
        exact = _scaled(int(digits), 10, exp10)
    elif m := _HEX_FLOAT.fullmatch(text):
        sign, whole, frac, only_frac, exp = m.groups()
        digits = ((whole or "") + (frac or only_frac or "")).replace("_", "")
        exp2 = int(exp.replace("_", "")) - 4 * len((frac or only_frac or "").replace("_", ""))
        exact = _scaled(int(digits, 16), 2, exp2)
    else:
        raise ValueError("not a number")
    value = _round_to_float32(exact)
    # Shortest digits that read back as the same float32 (numpy's Dragon4 "unique" mode).
    value = float(np.format_float_scientific(np.float32(value), unique=True))
    return -value if sign == "-" else value


def _scaled(mantissa: int, base: int, exponent: int) -> Fraction | None:
    """mantissa * base**exponent exactly, or None when far beyond float32's range."""
    if mantissa == 0:
        return Fraction(0)
    # Settle absurd exponents without building 10**1000000: float32 spans about 1e-45..3.4e38.
    magnitude = len(str(mantissa)) + exponent if base == 10 else mantissa.bit_length() + exponent
    limit_hi, limit_lo = (40, -50) if base == 10 else (130, -160)
    if magnitude > limit_hi:
        return None
    if magnitude < limit_lo:
        return Fraction(0)
    return Fraction(mantissa) * Fraction(base) ** exponent


def _round_to_float32(x: Fraction | None) -> float:
    """Round a non-negative exact value to the nearest float32 (ties to even)."""
    if x is None:
        raise ValueError("out of the float32 range")
    if x == 0:
        return 0.0
    e = x.numerator.bit_length() - x.denominator.bit_length()
    while Fraction(2) ** e > x:
        e -= 1
    while Fraction(2) ** (e + 1) <= x:
        e += 1
    step = Fraction(2) ** (max(e, -126) - 23)  # 24-bit mantissa; subnormals below 2**-126
    rounded = round(x / step) * step  # Fraction rounds half to even
    if rounded > _FLOAT32_MAX:
        raise ValueError("out of the float32 range")
    return float(rounded)


def format_option_value(value: Any) -> str:
    """Write one option value as Go's `%v` does (`ollama show` prints parameters that way).

    Ints stay ints: Go has them as float64 after reading the params JSON and prints 1e+06
    for a num_ctx of 1000000, which its own parser then refuses; we write 1000000.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_format_float(value)
    return str(value)


def go_format_float(x: float) -> str:
    """Go's `%v` for a float64: shortest digits, %e notation below 1e-4 and from 1e+06."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0:
        return sign + "0"
    digits, exp10 = _shortest_digits(abs(x))
    point = exp10 + len(digits)  # the decimal point sits after this many digits
    exp = point - 1
    if exp < -4 or exp >= 6:
        frac = digits[1:]
        return f"{sign}{digits[0]}{'.' + frac if frac else ''}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _shortest_digits(x: float) -> tuple[str, int]:
    """The shortest decimal digits of a positive float and the power of ten of the last one."""
    # repr() gives the shortest round-trip digits, the same digits Go's shortest mode picks.
    r = repr(x)
    mantissa, _, exp = r.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    exp10 = int(exp or 0) - len(frac)
    stripped = digits.rstrip("0")
    return stripped, exp10 + len(digits) - len(stripped)
