"""Fast JSON for the per-input path: :mod:`orjson` where it gives the same answer as :mod:`json`.

orjson (a hard dependency, ``install_requires``) parses and encodes several times faster than the
stdlib module, but it does not give the same answer on every input. Every function here therefore
falls back to :mod:`json` wherever orjson would differ, so callers keep the stdlib semantics:

parsing (:func:`loads`)
    * integer literals beyond 64 bits: orjson silently turns them into floats (``10**30`` →
      ``1e30``; ``10**400`` → error). A run of 19+ digits anywhere sends the text to json.loads.
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
import re
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

#: 19+ digits in a row: a possible integer literal beyond 64 bits, which orjson would make a float.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_STR = re.compile(r"[0-9]{19}")

#: orjson options of :func:`dumps_header`: whatever orjson would encode differently from json
#: (subclasses, dataclasses, datetimes) is passed to ``default``, which refuses it -> json decides.
_HEADER_OPTS = 0
if _orjson is not None:
    _HEADER_OPTS = (_orjson.OPT_PASSTHROUGH_SUBCLASS | _orjson.OPT_PASSTHROUGH_DATACLASS
                    | _orjson.OPT_PASSTHROUGH_DATETIME)


#: ``orjson.loads`` (None without orjson), for a caller that guards with :data:`LONG_DIGITS` itself
#: and sends whatever it refuses to :func:`loads`.
orjson_loads: Optional[Callable[[Any], Any]] = _orjson.loads if _orjson is not None else None
LONG_DIGITS = _LONG_DIGITS


def loads(raw: Any) -> Any:
    """``json.loads(raw)``, with the same result and the same exceptions, faster."""
    if _orjson is not None:
        pattern = _LONG_DIGITS_STR if isinstance(raw, str) else _LONG_DIGITS
        try:
            long_digits = pattern.search(raw) is not None
        except TypeError:  # not str or bytes-like: json.loads raises the usual TypeError
            long_digits = True
        if not long_digits:
            try:
                return _orjson.loads(raw)
            except _orjson.JSONDecodeError:
                pass  # json.loads accepts it (NaN, lone surrogate, BOM, ...) or gives its own error
    return json.loads(raw)


def has_nonfinite(obj: Any, depth: int = 0) -> bool:
    """Does ``obj`` (dicts, lists, tuples, floats, numpy scalars/arrays) hold a NaN or infinity?"""
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if depth > 64:
        return True  # cannot tell cheaply: the caller takes the json path
    if isinstance(obj, dict):
        return any(has_nonfinite(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(has_nonfinite(v, depth + 1) for v in obj)
    kind = getattr(getattr(obj, "dtype", None), "kind", None)
    if kind in ("f", "c"):
        import numpy as np

        return not bool(np.isfinite(obj).all())
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
