"""Fast JSON for the per-input path: :mod:`orjson` where it gives the same answer as :mod:`json`.

orjson (a hard dependency, ``install_requires``) parses and encodes several times faster than the
stdlib module, but it does not give the same answer on every input. Every function here therefore
falls back to :mod:`json` wherever orjson would differ, so callers keep the stdlib semantics:

parsing (:func:`loads`)
    * integer literals beyond 64 bits: orjson silently turns them into floats (``10**30`` →
      ``1e30``; ``10**400`` → error). A run of 19+ digits anywhere sends the text to json.loads.
      (Floats agree: 200 000 random literals, 17-40 digits, exponents ±330, parse identically.)
    * ``NaN``/``Infinity``/``-Infinity`` literals, ``1e400`` (json: ``inf``), lone surrogates
      (``"\\ud800"``), a UTF-8 BOM, UTF-16/32 text: orjson refuses them; json.loads decides.
    * duplicate keys: both keep the last value; trailing whitespace: both accept.
encoding (:func:`dumps_header`)
    * non-ASCII text: orjson writes UTF-8, json escapes it (``\\u00e9``); any non-ASCII output is
      re-encoded by json, so every line stays ASCII (no raw U+2028/U+0085 a reader could split on).
    * NaN/inf: orjson writes ``null``, json writes ``NaN`` (or raises with ``allow_nan=False``);
      when a ``null`` appears and the value holds a non-finite float, json encodes it instead.
    * integers beyond 64 bits, non-str keys, float/str/int/dict/list subclasses, types json
      refuses (dataclasses, datetimes: passed through): orjson raises, json decides.

If orjson cannot be imported (a box without the wheel), everything uses :mod:`json`, and one
warning says so.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Optional

log = logging.getLogger("edged.json")

try:
    import orjson as _orjson
except ImportError as _exc:  # pragma: no cover - orjson is in install_requires
    _orjson = None  # type: ignore[assignment]
    log.warning("orjson is not importable (%s): JSON headers and records use the slower stdlib json module; "
                "install it with: pip install 'orjson>=3.9'", _exc)

#: True if orjson is in use.
HAVE_ORJSON = _orjson is not None

#: every byte -> b"0" for an ASCII digit, b" " otherwise: 19+ digits in a row (a possible integer
#: literal beyond 64 bits, which orjson would make a float) become a substring search. C speed and
#: linear, unlike a ``[0-9]{19}`` regex (which re-scans each run of digits: 8 us on a 600-byte message).
_DIGIT_MAP = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_RUN = b"0" * 19


def has_long_digit_run(raw: Any) -> bool:
    """Does ``raw`` (bytes-like or str) hold 19+ ASCII digits in a row? True if it cannot tell."""
    try:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        elif not isinstance(raw, (bytes, bytearray)):
            raw = bytes(memoryview(raw))  # memoryview: an int is not a buffer (bytes(5) would be)
        return _LONG_RUN in raw.translate(_DIGIT_MAP)
    except (TypeError, ValueError):
        return True


#: orjson options of :func:`dumps_header`: whatever orjson would encode differently from json
#: (subclasses, dataclasses, datetimes) is passed to ``default``, which refuses it -> json decides.
_HEADER_OPTS = 0
if _orjson is not None:
    _HEADER_OPTS = (_orjson.OPT_PASSTHROUGH_SUBCLASS | _orjson.OPT_PASSTHROUGH_DATACLASS
                    | _orjson.OPT_PASSTHROUGH_DATETIME)


#: ``orjson.loads`` (None without orjson), for a fast path that checks the result itself (an integer
#: literal beyond 64 bits comes back as a float of magnitude >= 2**63) and sends the rest to :func:`loads`.
orjson_loads: Optional[Callable[[Any], Any]] = _orjson.loads if _orjson is not None else None


def loads(raw: Any) -> Any:
    """``json.loads(raw)``, with the same result and the same exceptions, faster."""
    if _orjson is not None and not has_long_digit_run(raw):
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # json.loads accepts it (NaN, lone surrogate, BOM, ...) or gives its own error
    return json.loads(raw)


def has_nonfinite(obj: Any) -> bool:
    """Does ``obj`` (dicts, lists, tuples, floats, numpy scalars/arrays) hold a NaN or infinity?

    Iterative, exact types first (0.8 us on a fog header, 1.6 us on a sink header). Only called on
    what orjson encoded, so ``obj`` is finite (no cycles) and at most 254 levels deep.
    """
    stack = [obj]
    pop = stack.pop
    push = stack.extend
    while stack:
        o = pop()
        t = type(o)
        if t is float:
            if o - o != 0.0:  # NaN - NaN and inf - inf are NaN
                return True
        elif t is dict:
            push(o.values())
        elif t is list or t is tuple:
            push(o)
        elif t is str or t is int or o is None or t is bool:
            pass
        elif isinstance(o, float):
            if not math.isfinite(o):
                return True
        elif isinstance(o, dict):
            push(o.values())
        elif isinstance(o, (list, tuple)):
            push(o)
        elif getattr(getattr(o, "dtype", None), "kind", None) in ("f", "c"):  # numpy scalar or array
            import numpy as np

            if not bool(np.isfinite(o).all()):
                return True
    return False


def _refuse(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is left to json")


def dumps_header(obj: Any, fallback: Callable[[Any], str], default: Optional[Callable[[Any], Any]] = None) -> bytes:
    """``fallback(obj).encode("utf-8")`` (a compact, ASCII json encoder), faster where orjson agrees.

    ``default`` (optional) converts what neither encoder knows (e.g. numpy scalars); it must only
    return JSON-native values. Raises what ``fallback`` raises.
    """
    if _orjson is not None:
        try:
            out = _orjson.dumps(obj, default=default or _refuse, option=_HEADER_OPTS)
        except TypeError:  # orjson.JSONEncodeError: json decides (and raises if it must)
            pass
        else:
            if out.isascii() and (b"null" not in out or not has_nonfinite(obj)):
                return out
    return fallback(obj).encode("utf-8")
