"""Parse run configs: the entry points that need every method's own config section.

:mod:`raysl.config` holds the typed sections and :class:`~raysl.config.RunConfig`, but a run config's
``method:`` is validated by the method's own config class, which lives with the method in
``raysl/methods/<name>.py``; config, a layer below the methods, never imports them. This module is above
both and imports :mod:`raysl.methods` (the registry) first, so a config parsed through it always knows every
method: use ``load_config``, ``build_config`` and ``RunConfig`` from here to parse one. (It imports torch,
as the methods do: modules that must start without it import this one inside the function that parses.)
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

import raysl.methods  # noqa: F401 (registers every method: raysl.config.METHOD_REGISTRY)
from raysl.config import DEFAULT_METHOD, METHOD_REGISTRY, MethodSection, RunConfig
from raysl.config_load import config_tree, error_loc, format_validation_error, get_dotted, parse_override, set_dotted
from raysl.errors import ConfigError

__all__ = ["RunConfig", "build_config", "config_keys", "load_config"]


def _method_config_class(name: Any) -> type[MethodSection] | None:
    method = METHOD_REGISTRY.get(name) if isinstance(name, str) else None
    return method.config_class if method is not None else None


def config_keys(method_name: str = DEFAULT_METHOD) -> list[str]:
    """Every dotted key a run config of ``method_name`` accepts (``optim.lr``, ``method.temperature``...)."""

    def walk(model: Any, prefix: str) -> list[str]:
        keys = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if prefix == "" and name == "method":
                cls = _method_config_class(method_name) or _method_config_class(DEFAULT_METHOD)
                keys += [f"method.{k}" for k in cls.model_fields]
            elif isinstance(ann, type) and issubclass(ann, BaseModel):
                keys += walk(ann, f"{prefix}{name}.")
            else:
                keys.append(f"{prefix}{name}")
        return keys

    return walk(RunConfig, "")


# names other libraries use for our keys (the last part of a dotted key)
_SYNONYMS = {"learning_rate": "lr", "wd": "weight_decay", "bs": "batch_size", "batch": "batch_size",
             "epoch": "epochs", "temp": "temperature", "tau": "temperature", "workers": "num_workers"}


def _did_you_mean(key: str, method_name: str) -> str:
    known = config_keys(method_name)
    head, _, leaf = key.rpartition(".")
    synonym = f"{head}.{_SYNONYMS[leaf]}" if head and leaf in _SYNONYMS else None
    close = [synonym] if synonym in known else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:  # a right name in the wrong section: optim.temperature -> method.temperature
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:1]
    return f"; did you mean {close[0]}?" if close else ""


def build_config(tree: dict, source: str = "config", set_keys: dict[str, str] | None = None) -> RunConfig:
    """Validate ``tree``; a ConfigError names the file (or the ``--set`` item of an override) and the key.

    ``set_keys``: dotted key -> the ``--set key=value`` item that set it.
    """
    set_keys = set_keys or {}
    try:
        config = RunConfig.model_validate(tree)
        config._set_keys = dict(set_keys)
        return config
    except ValidationError as exc:
        err, loc = error_loc(exc)
        dotted = ".".join(loc)
        from_set = next((item for k, item in set_keys.items() if dotted == k or dotted.startswith(k + ".")), None)
        if from_set is not None:
            source = f"--set {from_set}"
        msg = format_validation_error(exc, source)
        name = get_dotted(tree, "method.name", DEFAULT_METHOD)
        if err["type"] == "extra_forbidden":
            msg += _did_you_mean(dotted, name if isinstance(name, str) else DEFAULT_METHOD)
        if dotted.startswith("method.") and "unknown key" in msg:
            cls = _method_config_class(name)
            if cls is not None:
                msg += f"; {name} takes: {', '.join(k for k in cls.model_fields if k != 'name')}"
        raise ConfigError(msg) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config (or a search space's base), apply ``--set`` overrides, validate."""
    tree = config_tree(path) if path is not None else {}
    set_keys: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        tree = set_dotted(tree, key, value)
        set_keys[key] = item.strip()
    return build_config(tree, str(path) if path is not None else "--set", set_keys)
