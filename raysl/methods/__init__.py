"""Method registry: one line per method."""

from __future__ import annotations

import inspect

from raysl.config import RunConfig
from raysl.methods.barlow import BarlowTwins
from raysl.methods.base import Method
from raysl.methods.byol import BYOL
from raysl.methods.dcl import DCL
from raysl.methods.dclw import DCLW
from raysl.methods.dino import DINO
from raysl.methods.directpred import DirectPred
from raysl.methods.isogclr import ISogCLR
from raysl.methods.mixed_barlow import MixedBarlowTwins
from raysl.methods.moco import MoCo
from raysl.methods.msbreg import MSBReg
from raysl.methods.mv_infonce import MVInfoNCE
from raysl.methods.simclr import SimCLR
from raysl.methods.simsiam import SimSiam
from raysl.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "simsiam": SimSiam,
    "directpred": DirectPred,
    "barlow": BarlowTwins,
    "mixed_barlow": MixedBarlowTwins,
    "vicreg": VICReg,
    "dino": DINO,
    "msbreg": MSBReg,
    "dcl": DCL,
    "dclw": DCLW,
    "isogclr": ISogCLR,
    "moco": MoCo,
    "mv_infonce": MVInfoNCE,
}


def build_method(cfg: RunConfig, in_channels: int, num_samples: int | None = None) -> Method:
    """The configured method. ``num_samples`` (rows in the data set) sizes per-sample state (iSogCLR)."""
    name = cfg.method.name
    if name not in METHODS:
        from raysl.errors import ConfigError

        raise ConfigError(f"method.name: {name!r} is not implemented yet; available: {', '.join(METHODS)}")
    cls = METHODS[name]
    if num_samples is not None and "num_samples" in inspect.signature(cls.__init__).parameters:
        return cls(cfg.method, cfg.model, in_channels, num_samples=num_samples)
    return cls(cfg.method, cfg.model, in_channels)
