"""Strict JSON for everything raysl writes that a user or a tool reads.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default: not
JSON, and ``JSON.parse``, ``jq`` and most other readers reject the whole
document. A metric can legitimately be non-finite (a diverging loss, a ratio
whose denominator is 0, a fit whose interval is unbounded), so every writer
goes through :func:`dumps`: a non-finite number becomes ``null`` ("no finite
value"), and ``allow_nan=False`` makes any value that slips past the
conversion fail loudly here rather than in a reader.

Its own module, importing nothing of raysl's and neither numpy nor torch (they
are recognised by their ``tolist``), so every layer can use it, from the data
manifest to the CLI, without pulling in the storage layer's pyarrow.

``json.dumps`` used only as an internal key (hashing, de-duplication) is left
as it is: nothing outside the process reads it.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "key", "plain", "print_line", "to_json_safe"]


def to_json_safe(obj: Any, *, nonfinite_as_none: bool = True) -> Any:
    """``obj`` with every non-finite float replaced by None (unless ``nonfinite_as_none`` is False), recursively.

    Mappings become dicts with string keys, lists and tuples become lists;
    numpy scalars and arrays and torch tensors become Python numbers and lists
    (their ``tolist``), so ``np.float64(inf)`` and a 0-d tensor holding NaN
    become None too. Anything else is returned as it is (``json``'s
    ``default=`` still applies to it).
    """
    if isinstance(obj, (str, bool)) or obj is None:  # before the numbers: bool is an int, np.str_ a str
        return obj
    if isinstance(obj, float):  # np.float64 included (a float subclass)
        return float(obj) if math.isfinite(obj) or not nonfinite_as_none else None
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): to_json_safe(v, nonfinite_as_none=nonfinite_as_none)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v, nonfinite_as_none=nonfinite_as_none) for v in obj]
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):  # numpy scalar/array (float32, int64, bool_), torch tensor: plain Python first
        return to_json_safe(tolist(), nonfinite_as_none=nonfinite_as_none)
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` of :func:`to_json_safe` (``obj``): strict JSON, ``null`` where a number was not finite."""
    return json.dumps(to_json_safe(obj), allow_nan=False, **kw)


def key(obj: Any) -> str:
    """A canonical strict-JSON text of ``obj`` for comparing, grouping and de-duplicating values (sorted keys,
    ``str`` of what JSON cannot hold, ``null`` for a non-finite number): the one way raysl makes such keys."""
    return dumps(obj, sort_keys=True, default=str)


def plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (dicts with string keys, lists for tuples, Python numbers), numbers
    kept as they are: for comparing a config with one read back from YAML, where inf stays inf."""
    return to_json_safe(obj, nonfinite_as_none=False)


def print_line(obj: Any) -> None:
    """One strict-JSON line on stdout, flushed: the summary line a command ends with, which scripts parse."""
    print(dumps(obj), flush=True)
