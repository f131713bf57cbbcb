"""A finished scaling experiment as stored, for its report: ``scaling.json`` and the scaling file
(:func:`read_scaling`, :func:`stored_spec`), its fits as :class:`raysl.scaling_laws.LawFit` (:func:`stored_fit`),
the predictions stored and new (:func:`predictions`), and how its numbers, intervals and points are written in
the plots (:mod:`raysl.scaling_plots`), the page (:mod:`raysl.scaling_report`) and the transfer report."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from typing import Any

from raysl import jsonio, storage
from raysl import scaling_laws as laws
from raysl.console import format_number

FROM_SCALE, FROM_ANALYZE = "raysl scale", "raysl analyze --predict"


def read_scaling(location: str) -> tuple[dict, dict | None] | None:
    """(``scaling.json``, the stored scaling file as a mapping or None) of the experiment at ``location``;
    None when it holds no ``scaling.json`` (not a ``raysl scale`` experiment, or one whose fits have not run)."""
    import yaml

    from raysl.errors import RayslError
    from raysl.scaling import RESULT_FILE, SCALING_FILE

    text = storage.read_text(storage.join(location, RESULT_FILE), missing_ok=True)
    if text is None:
        return None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RayslError(f"{storage.join_uri(location, RESULT_FILE)} is not valid JSON ({exc}); re-run "
                         "`raysl scale FILE --resume` to write it again") from None
    spec_text = storage.read_text(storage.join(location, SCALING_FILE), missing_ok=True)
    try:
        spec = yaml.safe_load(spec_text) if spec_text else None
    except yaml.YAMLError:
        spec = None
    return result, spec if isinstance(spec, dict) else None


def stored_spec(result: dict, spec_data: dict | None, name: str = ""):
    """The stored scaling file (``spec_data``, from :func:`read_scaling`) as a ``ScalingSpec``; None without one."""
    from raysl.scaling import scaling_from_dict

    spec = None
    if spec_data is not None:
        spec = scaling_from_dict(spec_data, f"{result.get('experiment', name)}/raysl_scaling.yaml")
    return spec


def stored_fit(result: dict, key: str, spec=None) -> laws.LawFit | None:
    """The fit ``key`` (``compute`` | ``model_data``) of ``scaling.json`` as a :class:`LawFit`.

    Its bootstrap samples are in the file (``raysl scale`` stores them); a file written before they were
    is refitted from its runs with the scaling file's settings (same seed: the same samples).
    """
    data = result.get(key)
    if not data:
        return None
    fit = laws.LawFit.from_dict(data)
    if len(fit.samples) or spec is None:
        return fit
    runs = result.get("runs") or []
    kw = {"n_bootstrap": spec.fit.bootstrap, "level": spec.fit.level, "seed": spec.fit.seed}
    if key == "compute":
        used = set(data.get("runs") or [r["trial_id"] for r in runs])
        points = [r for r in runs if r["trial_id"] in used]
        return laws.fit_compute_law([r["flops"] for r in points], [r["error"] for r in points], **kw)
    return laws.fit_model_data_law([r["n_params"] for r in runs], [r["train_images"] for r in runs],
                                   [r["error"] for r in runs], **kw)


def predictions(result: dict, spec, points: list[dict[str, Any]],
                point_values: Callable[[], Callable] | None = None) -> list[dict[str, Any]]:
    """The stored predictions, then one per new point in ``points`` (not already stored), from the stored fits.

    ``point_values()`` gives the ``point -> (N, D, C)`` counter of :func:`raysl.scaling_fits.point_values_for`; it is
    called only when a point names grid axes (it reads the data set's manifest).
    """
    from raysl.scaling_fits import predict_at

    out = [{**p, "source": FROM_SCALE} for p in result.get("predictions") or []]
    stored = [jsonio.key(p["point"]) for p in out]
    new = [p for p in points if jsonio.key(p) not in stored]
    if not new:
        return out
    fits = {key: stored_fit(result, key, spec) for key in ("compute", "model_data")}
    counter = None
    for point in new:
        if "compute" not in point and counter is None:
            counter = point_values()
        out.append({**predict_at(point, fits["compute"], fits["model_data"], counter), "source": FROM_ANALYZE})
    return out


_g = partial(format_number, exact_ints=True)  # _g(x, digits=4): an int in full (a batch size, a step count)


def _interval(pair: Any) -> str:
    if not pair or any(v is None or not math.isfinite(float(v)) for v in pair):
        return "-"
    return f"[{_g(pair[0])}, {_g(pair[1])}]"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{_short(k)}={v}" for k, v in values.items()) or "all runs"


def point_text(point: dict[str, Any]) -> str:
    """``model.width=64`` / ``compute=1e+15``: a prediction point as typed."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def _note_for(result: dict, prefix: str) -> str:
    return next((n for n in result.get("notes") or [] if n.startswith(prefix)), f"{prefix} not fitted")


def _level(result: dict) -> str:
    return f"{100 * float(result.get('level') or laws.DEFAULT_LEVEL):g}%"
