"""Every config field is read by some code: a knob that is validated and documented but never passed on (as
`eval.knn_temperature` and `eval.rankme_max_samples` once were: 0.07 and 25,600 were hard-coded) fails here.

The check walks every section of the run config and every method's own config class, and looks for each
field as an attribute read (``.name``) or a key (``"name"``) in raysl's code outside the file that defines
it (``raysl/config.py`` counts for attribute reads only: its fields' definitions have no dot). A method's
knob is looked for only in its own module and its base classes' (method and config class): another method
that reads a knob of the same name does not make it read. Names that
another field or attribute shares can pass by that one (a lookup by text, not by type); a field with a
unique name that nothing reads cannot. Catches: a new knob wired into the config and the docs but not into
the code that should use it."""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from raysl.config import METHOD_REGISTRY, MethodSection
from raysl.run_config import RunConfig

RAYSL = Path(__file__).resolve().parents[1] / "raysl"


def _fields(model: type[BaseModel], prefix: str, seen: set) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + name)
        for t in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel) and t not in seen:
                seen.add(t)
                out += _fields(t, f"{prefix}{name}.", seen)
    return out


def _read(field: str, sources: dict[Path, str]) -> bool:
    key = field.rsplit(".", 1)[-1]
    attribute, quoted = re.compile(rf"\.{key}\b"), re.compile(rf"[\"']{key}[\"']")
    return any(attribute.search(text) or (path.name != "config.py" and quoted.search(text))
               for path, text in sources.items())


def _own_sources(method: type) -> dict[Path, str]:
    """The modules of a method class and of its config class, with those of their base classes (raysl's
    own, but not raysl/config.py, whose MethodSection defines only ``name``, checked with the run config):
    where that method's knobs are read. A knob of the same name read by another method does not count."""
    files = {Path(inspect.getfile(cls)).resolve() for cls in (*inspect.getmro(method),
                                                               *inspect.getmro(method.config_class))
             if cls.__module__.startswith("raysl.") and cls.__module__ != "raysl.config"}
    return {path: path.read_text() for path in files}


def test_every_config_field_is_read_somewhere():
    sources = {p: p.read_text() for p in RAYSL.rglob("*.py")}
    fields = _fields(RunConfig, "", set())
    unread = [f for f in fields if not _read(f, sources)]
    knobs = 0
    for name, method in METHOD_REGISTRY.items():
        own = _own_sources(method)
        for knob in sorted(set(method.config_class.model_fields) - set(MethodSection.model_fields)):  # not name
            knobs += 1
            if not _read(f"method[{name}].{knob}", own):
                unread.append(f"method[{name}].{knob}")
    assert len(fields) + knobs > 150  # the walk reached every section and every method's config
    assert not unread, f"config fields nothing reads (a method's knobs: in its own module or its bases'): {unread}"


def test_the_lookup_tells_a_read_field_from_an_unread_one():
    """The lookup itself: a knob config.py defines but nothing reads is unread, the same knob read as an
    attribute elsewhere is read (its definition line in config.py does not count)."""
    config = RAYSL / "config.py"
    sources = {config: "class EvalConfig(Section):\n    zz_knob: float = 0.07\n",
               RAYSL / "evaluate.py": "def knn(x, t=0.07):\n    return x / t\n"}
    assert not _read("eval.zz_knob", sources)
    sources[RAYSL / "evaluate.py"] += "def use(cfg):\n    return knn(1, cfg.eval.zz_knob)\n"
    assert _read("eval.zz_knob", sources)
