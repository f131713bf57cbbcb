"""Method registry: one line per method, ``register("name", MethodClass)`` below.

A method is one file, ``raysl/methods/<name>.py``: its config class (a
``raysl.config.MethodSection``) and its method class, whose ``config_class``
points at it (see :mod:`raysl.methods.base`). Registering puts the method in
``raysl.config.METHOD_REGISTRY``, by which a run config's ``method:`` section
is validated: importing this package (``raysl.run_config`` does) registers
every method below.
"""

from __future__ import annotations

from raysl.config import METHOD_REGISTRY, MethodSection, RunConfig
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

#: name -> method class, in registration order: the dict is raysl.config.METHOD_REGISTRY (config, a layer
#: below, looks a run config's method up in it without importing this package)
METHODS: dict[str, type[Method]] = METHOD_REGISTRY  # type: ignore[assignment]


def register(name: str, cls: type[Method]) -> type[Method]:
    """Make ``cls`` the method of ``method: {name: NAME}``: its ``config_class`` validates that section."""
    config = cls.__dict__.get("config_class")
    if not (isinstance(config, type) and issubclass(config, MethodSection) and config is not MethodSection):
        raise TypeError(f"register({name!r}, {cls.__name__}): {cls.__name__}.config_class must be its own "
                        "raysl.config.MethodSection subclass, defined next to it")
    declared = config.model_fields["name"].default
    if declared != name:
        raise ValueError(f"register({name!r}, {cls.__name__}): {config.__name__}.name defaults to {declared!r}; "
                         f"give it name: Literal[{name!r}] = {name!r}")
    if METHODS.get(name, cls) is not cls:
        raise ValueError(f"register({name!r}, {cls.__name__}): {name!r} is {METHODS[name].__name__} already")
    METHODS[name] = cls
    return cls


register("simclr", SimCLR)
register("byol", BYOL)
register("simsiam", SimSiam)
register("directpred", DirectPred)
register("barlow", BarlowTwins)
register("mixed_barlow", MixedBarlowTwins)
register("vicreg", VICReg)
register("dino", DINO)
register("msbreg", MSBReg)
register("dcl", DCL)
register("dclw", DCLW)
register("isogclr", ISogCLR)
register("moco", MoCo)
register("mocov3", MoCoV3)
register("wmse", WMSE)
register("vibcreg", VIbCReg)
register("ressl", ReSSL)
register("mv_infonce", MVInfoNCE)
register("swav", SwAV)
register("deepclusterv2", DeepClusterV2)
register("nnclr", NNCLR)
register("nnbyol", NNBYOL)
register("nnsiam", NNSiam)
register("supcon", SupCon)
register("mae", MAE)


def build_method(cfg: RunConfig, in_channels: int, num_samples: int | None = None) -> Method:
    """The configured method. ``num_samples`` (rows in the data set) sizes per-sample state (a method with
    ``uses_num_samples``: iSogCLR, DeepCluster-v2)."""
    name = cfg.method.name
    if name not in METHODS:
        from raysl.errors import ConfigError

        raise ConfigError(f"method.name: {name!r} is not implemented yet; available: {', '.join(METHODS)}")
    cls = METHODS[name]
    method_cfg = ema_scaled_method_config(cfg)
    if num_samples is not None and cls.uses_num_samples:
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
