"""Method registry: one line per method."""

from __future__ import annotations

import inspect

from raysl.config import RunConfig
from raysl.methods.barlow import BarlowTwins
from raysl.methods.base import Method
from raysl.methods.byol import BYOL
from raysl.methods.dcl import DCL
from raysl.methods.dclw import DCLW
from raysl.methods.deepclusterv2 import DeepClusterV2
from raysl.methods.dino import DINO
from raysl.methods.directpred import DirectPred
from raysl.methods.isogclr import ISogCLR
from raysl.methods.mae import MAE
from raysl.methods.mixed_barlow import MixedBarlowTwins
from raysl.methods.moco import MoCo
from raysl.methods.mocov3 import MoCoV3
from raysl.methods.msbreg import MSBReg
from raysl.methods.mv_infonce import MVInfoNCE
from raysl.methods.nnbyol import NNBYOL
from raysl.methods.nnclr import NNCLR
from raysl.methods.nnsiam import NNSiam
from raysl.methods.ressl import ReSSL
from raysl.methods.simclr import SimCLR
from raysl.methods.simsiam import SimSiam
from raysl.methods.supcon import SupCon
from raysl.methods.swav import SwAV
from raysl.methods.vibcreg import VIbCReg
from raysl.methods.vicreg import VICReg
from raysl.methods.wmse import WMSE

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
    "mocov3": MoCoV3,
    "wmse": WMSE,
    "vibcreg": VIbCReg,
    "ressl": ReSSL,
    "mv_infonce": MVInfoNCE,
    "swav": SwAV,
    "deepclusterv2": DeepClusterV2,
    "nnclr": NNCLR,
    "nnbyol": NNBYOL,
    "nnsiam": NNSiam,
    "supcon": SupCon,
    "mae": MAE,
}


def build_method(cfg: RunConfig, in_channels: int, num_samples: int | None = None) -> Method:
    """The configured method. ``num_samples`` (rows in the data set) sizes per-sample state (iSogCLR)."""
    name = cfg.method.name
    if name not in METHODS:
        from raysl.errors import ConfigError

        raise ConfigError(f"method.name: {name!r} is not implemented yet; available: {', '.join(METHODS)}")
    cls = METHODS[name]
    method_cfg = ema_scaled_method_config(cfg)
    if num_samples is not None and "num_samples" in inspect.signature(cls.__init__).parameters:
        return cls(method_cfg, cfg.model, in_channels, num_samples=num_samples)
    return cls(method_cfg, cfg.model, in_channels)


def ema_scaled_method_config(cfg: RunConfig):
    """``cfg.method`` with its EMA momenta raised to ``kappa = batch_size / optim.ema_reference_batch``.

    Busbridge et al. 2023 (``raysl.scaling_laws.scaled_ema``); unchanged when
    ``optim.ema_reference_batch`` is unset or the method has no EMA teacher.
    """
    from raysl.scaling_laws import scaled_ema

    reference = cfg.optim.ema_reference_batch
    if reference is None or not hasattr(cfg.method, "ema_base"):
        return cfg.method
    kappa = cfg.optim.batch_size / reference
    return cfg.method.model_copy(update={"ema_base": scaled_ema(cfg.method.ema_base, kappa),
                                         "ema_final": scaled_ema(cfg.method.ema_final, kappa)})
