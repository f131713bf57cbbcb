"""A run config's files and overrides: reading YAML strictly, ``--set key=value`` on dotted keys, one-line
validation errors, and the YAML a run saves.

The sections themselves are :mod:`raysl.config`; parse a run config through :mod:`raysl.run_config`
(``load_config``, ``build_config``), which uses these with every method registered.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raysl.config import RunConfig
from raysl.errors import ConfigError


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value) with the value parsed as YAML (so 0.1, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. --set method.temperature=0.1")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string; users mean a number
            value = float(value)
        except ValueError:
            pass
    return key, value


def set_dotted(tree: dict, key: str, value: Any) -> dict:
    """Return a copy of ``tree`` with ``key`` (dotted) set to ``value``; sections are created."""
    out = copy.deepcopy(tree)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value
    return out


def get_dotted(tree: dict, key: str, default: Any = None) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


EMPTY_CONFIG_HINT = ("a run config needs at least its method: section, e.g. method: {name: simclr}; "
                     "see search_spaces/quickstart.yaml (its base: is a complete run config)")


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping (``key`` at ``problem_mark``, first at ``first_line``)."""

    def __init__(self, key: Any, node: yaml.Node, first: yaml.Node):
        super().__init__(None, None, f"duplicate key {key!r}", node.start_mark)
        self.key = key
        self.first_line = first.start_mark.line + 1


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (no Python tags: nothing in a file runs) that refuses a key given twice
    in one mapping: PyYAML keeps the last one silently, so `batch_size: 64` then `batch_size: 256` trained
    with 256. Merge keys (``<<: *base``) still let a mapping override what it merges, as YAML means."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error says so below
                    continue
                if first is not key_node:
                    raise DuplicateKeyError(key, key_node, first)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, empty_hint: str = EMPTY_CONFIG_HINT) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a file; pass a YAML file, e.g. search_spaces/quickstart.yaml")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); check the path and its "
                          "permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # an image, an archive, a checkpoint: YAML is text
        raise ConfigError(f"{path} is not a text file (byte {exc.start} is not UTF-8: binary data?); pass a YAML "
                          "config, e.g. search_spaces/quickstart.yaml") from None
    try:
        data = yaml.load(text, Loader=StrictSafeLoader)  # a SafeLoader: no Python tags
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: line {exc.problem_mark.line + 1}: duplicate key {exc.key!r} (first on line "
                          f"{exc.first_line}) in one mapping; YAML would silently keep the last one: keep one "
                          "of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None or data == {}:  # nothing but comments or blank lines: never train (or search) defaults
        raise ConfigError(f"{path} is empty; {empty_hint}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def error_loc(exc: ValidationError) -> tuple[dict, list[str]]:
    """The most informative error of ``exc`` and its dotted location."""
    # a union (e.g. data.augment: preset name | list of views) reports one error per member;
    # the structured member's error is the informative one
    err = max(exc.errors(), key=lambda e: len(_clean_loc(e["loc"])))
    return err, _clean_loc(err["loc"])


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: the file, the dotted key and what is allowed."""
    errors = exc.errors()
    err, loc = error_loc(exc)
    key = ".".join(loc) if loc else "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        section = ".".join(loc[:-1])
        msg = f"unknown key {key!r}"
        if section:
            msg += f" for {section}" + _allowed_keys_hint(loc)
    elif kind == "method_name":  # method_section: the message names the allowed methods
        msg = f"{key}: {err['msg']}"
    elif kind == "literal_error":
        got = err.get("input")
        msg = f"{key}: {got!r} is not allowed; expected {err['ctx']['expected']}"
    else:
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = f"{key}: {err['msg'].removeprefix('Value error, ')}{shown}"
    extra = len({tuple(_clean_loc(e["loc"])) for e in errors}) - 1
    if extra > 0:
        msg += f" (+{extra} more)"
    return f"{source}: {msg}"


def _clean_loc(loc) -> list[str]:
    """Drop pydantic's union-member tags (``list[...]``, ``function-after[...]``) from a location."""
    return [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]


def _allowed_keys_hint(loc: list[str]) -> str:
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return ""
        ann = field.annotation
        if part == "method":
            return ""
        model = ann
    if hasattr(model, "model_fields"):
        return "; allowed: " + ", ".join(model.model_fields)
    return ""


def config_tree(path: str | Path) -> dict:
    """The run-config mapping of a file: a run config itself, or a search space's ``base:``."""
    data = read_yaml(path)
    if "base" in data or "search" in data or "tune" in data:
        base = data.get("base")
        if not isinstance(base, dict):
            raise ConfigError(f"{path}: a search-space file needs a 'base:' mapping with the run config")
        return base
    return data


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
