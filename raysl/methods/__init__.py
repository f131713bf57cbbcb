"""Method registry: one line per method."""

from __future__ import annotations

from raysl.config import RunConfig
from raysl.methods.base import Method
from raysl.methods.byol import BYOL
from raysl.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
}


def build_method(cfg: RunConfig, in_channels: int) -> Method:
    name = cfg.method.name
    if name not in METHODS:
        from raysl.errors import ConfigError

        raise ConfigError(f"method.name: {name!r} is not implemented yet; available: {', '.join(METHODS)}")
    return METHODS[name](cfg.method, cfg.model, in_channels)
