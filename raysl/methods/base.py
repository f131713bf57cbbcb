"""The small base every method stands on (solo-learn's idea, without its trainer tie).

A method is an ``nn.Module`` that owns a backbone and its heads and turns a
list of augmented views into a loss. The training loop gives every method
the same things for free: evaluation (``embed``), EMA teachers
(``EMATeacher``), per-step schedules (``progress``) and cross-worker
gathering (``raysl.distributed.gather``).

Adding a method is one file, ``raysl/methods/<name>.py``, and one registry line:

1. its config class: a ``raysl.config.MethodSection`` subclass (``EMASchedule``
   below for an EMA teacher) with ``name: Literal["<name>"] = "<name>"`` and one
   typed field per knob, defaults from the paper (``extra="forbid"``: a
   misspelt key is an error); cross-field checks go in a pydantic
   ``model_validator`` of it;
2. its method class: subclass ``PairLossMethod`` (two views, one loss on the
   globally gathered projections), ``EMATeacherMethod`` (online network +
   predictor against a momentum teacher) or ``Method`` itself, set
   ``config_class`` to the class of step 1 (the method reads its knobs from
   ``self.cfg``), and declare what it needs with the class attributes below
   (``supports_local_crops``, ``needs_labels``, ``uses_num_samples``,
   ``backbones``, ``loss_is_sample_mean``, ``augment_preset``): the config
   checks, the launcher and the training loop read them, never the method's name;
3. one line in ``raysl/methods/__init__.py`` (with its import):
   ``register("<name>", MyMethod)``.

Then ``method: {name: <name>, knob: value}`` parses (``raysl.run_config``),
``--set method.knob=...`` works and the method trains; ``tests/test_methods.py``
then wants a ``search_spaces/<name>.yaml`` that learns on digits.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from raysl import distributed, schedules
from raysl.config import MethodSection, ModelConfig, Momentum
from raysl.models import build_backbone, mlp, mup_param_groups

# what training_loss returns besides the loss: the loop logs each key's mean over an epoch in that epoch's
# metrics (metrics.jsonl, Tune's results); a value may stay a device tensor, summed on the device (float() of
# one would wait for the GPU at every step)
Metrics = dict[str, "float | torch.Tensor"]


class Method(nn.Module):
    """Backbone + projector; subclasses define ``training_loss``."""

    #: The method's config class (a run config's ``method:`` section), defined next to the method: it
    #: is ``self.cfg``. ``raysl.methods.register`` checks that its ``name`` is the registered name.
    config_class: ClassVar[type[MethodSection]] = MethodSection
    #: The augmentation preset used when the config does not give its own views.
    augment_preset = "simclr"
    #: Whether the method uses multi-crop local crops (``data.local_crops``). Such a method
    #: gets ``views[:num_views]`` (the global views) followed by the local crops, which are
    #: smaller; a method without it is never given local crops (the config rejects them).
    supports_local_crops = False
    #: Whether the loss is a mean of per-sample terms (given the teacher, queue or centre of the
    #: step): then the gradient noise scale is an unbiased estimate and ``eval.noise_scale: auto``
    #: logs it (:mod:`raysl.noise_scale`); in-batch negatives and batch statistics make it biased.
    loss_is_sample_mean = False
    #: Whether the method needs the train split's labels (SupCon): the training loop then calls
    #: ``load_labels(data_dir, manifest)`` before training, and data without labels is a config error
    #: before Ray starts (``raysl.launch.check_against_data``).
    needs_labels = False
    #: Whether ``__init__`` takes ``num_samples`` (the data set's rows) to size per-image state
    #: (iSogCLR's temperatures, DeepCluster-v2's memory bank).
    uses_num_samples = False
    #: The ``model.backbone`` values the method trains; None: any. Another is a config error.
    backbones: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, method_cfg: Any, model_cfg: ModelConfig, in_channels: int):
        super().__init__()
        if self.backbones is not None and model_cfg.backbone not in self.backbones:  # the config refuses it first
            raise ValueError(f"{method_cfg.name} needs model.backbone: {' or '.join(self.backbones)} "
                             f"(got {model_cfg.backbone!r})")
        self.cfg = method_cfg
        self.model_cfg = model_cfg
        self.backbone, self.feat_dim = build_backbone(model_cfg, in_channels)
        self.projector = self.build_projector()
        self.progress = 0.0  # fraction of training done, set by the loop before each step

    @property
    def num_views(self) -> int:
        return int(getattr(self.cfg, "num_views", 2))

    def split_views(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the ``num_views`` global views, the local crops after them: empty without multi-crop)."""
        n = self.num_views
        if len(views) < n:
            raise ValueError(f"{type(self).__name__} expects {n} views (its global views), got {len(views)}")
        if len(views) > n and not self.supports_local_crops:
            raise ValueError(f"{type(self).__name__} does not use local crops; got {len(views) - n} beside "
                             f"its {n} views")
        return list(views[:n]), list(views[n:])

    def encode_crops(self, views: list[torch.Tensor], encode=None) -> list[torch.Tensor]:
        """``encode`` (default: the projection of :meth:`encode`) of each global view, then of the local crops.

        The global views go through one at a time, as in two-view training (BatchNorm sees
        each view's batch alone); the local crops, all of one size, go through in one
        batch, as DINO's multi-crop wrapper does, and come back split per crop.
        """
        encode = encode or (lambda x: self.encode(x)[1])
        global_views, local = self.split_views(views)
        out = [encode(v) for v in global_views]
        if local and all(v.shape == local[0].shape for v in local):
            out += list(encode(torch.cat(local)).chunk(len(local)))
        else:
            out += [encode(v) for v in local]
        return out

    def build_projector(self) -> nn.Module:
        m = self.model_cfg
        return mlp(self.feat_dim, m.projector_hidden_dim, m.projector_dim, m.projector_layers)

    @property
    def projection_dim(self) -> int:
        return self.model_cfg.projector_dim

    def forward(self, views: list[torch.Tensor], indices: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
        # DDP wraps ``forward``, so the whole loss computation runs inside it.
        self.split_views(views)  # the right number of global views; local crops only for methods that use them
        return self.training_loss(views, indices)

    def training_loss(self, views: list[torch.Tensor], indices: torch.Tensor | None) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step (EMA updates, queue pushes...)."""

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups; ``lr_scale`` multiplies the scheduled lr. Under ``model.parametrization:
        mup`` each group is split by layer role (:func:`with_mup_roles`); an override should end the same way."""
        return with_mup_roles(self, [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}])

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features for evaluation: the backbone's and the projector's."""
        h = self.backbone(x)
        return {"backbone": h, "projector": self.projector(h)}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self.projector(h)

    def gathered_projections(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each view's projection, gathered across workers with gradients (rows in rank order)."""
        return [distributed.gather(self.encode(v)[1]) for v in views]


def with_mup_roles(method: Method, groups: list[dict]) -> list[dict]:
    """A method's ``param_groups``, split by muP role under ``model.parametrization: mup`` (unchanged otherwise):
    :func:`raysl.models.mup_param_groups`, which finds the roles on the method built again, twice as wide."""
    kwargs = {"num_samples": method.num_samples} if method.uses_num_samples and hasattr(method, "num_samples") else {}

    def build(model_cfg: ModelConfig) -> nn.Module:
        return type(method)(method.cfg, model_cfg, method.backbone.in_channels, **kwargs)

    return mup_param_groups(groups, method, method.model_cfg, build)


class PairLossMethod(Method):
    """Two views through one network; a loss of the two globally gathered projections.

    Covers contrastive (SimCLR, DCL) and redundancy-reduction (Barlow Twins,
    VICReg) methods: subclasses implement ``pair_loss`` only.
    """

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, views, indices):
        _, z1 = self.encode(views[0])
        _, z2 = self.encode(views[1])
        z1, z2 = distributed.gather(z1), distributed.gather(z2)
        return self.pair_loss(z1, z2), {}


def frozen_copy(module: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for the parameters."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    # BN running statistics are copied: they describe the student's current activations.
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


class EMASchedule(MethodSection):
    """Teacher EMA momentum, cosine from ``ema_base`` to ``ema_final`` per step (BYOL)."""

    ema_base: Momentum = 0.99
    ema_final: Momentum = 1.0


class EMATeacherMethod(Method):
    """Online backbone+projector(+predictor) against a momentum teacher (BYOL, MoCo, DINO).

    The teacher follows the student with momentum cosine-scheduled per step
    from ``cfg.ema_base`` to ``cfg.ema_final``.
    """

    augment_preset = "byol"

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_projector = frozen_copy(self.projector)

    def ema_momentum(self) -> float:
        return schedules.ema_momentum(self.progress, self.cfg.ema_base, self.cfg.ema_final)

    def after_step(self) -> None:
        m = self.ema_momentum()
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_projector, self.projector, m)

    @torch.no_grad()
    def teacher_encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_projector(self.teacher_backbone(x))

    def param_groups(self) -> list[dict]:
        teacher = {id(p) for p in self.teacher_backbone.parameters()} | {id(p) for p in self.teacher_projector.parameters()}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in teacher]
        return with_mup_roles(self, [{"params": params, "lr_scale": 1.0}])


def predictor_mlp(model_cfg: ModelConfig) -> nn.Module:
    """BYOL/SimSiam predictor: projector_dim -> predictor_hidden_dim (BN, ReLU) -> projector_dim."""
    return mlp(model_cfg.projector_dim, model_cfg.predictor_hidden_dim, model_cfg.projector_dim, 2)


class StopGradPredictorMethod(Method):
    """One network, two views, a predictor on one side and a stop-gradient on the other (SimSiam, DirectPred).

    ``L = loss(p1, sg(z2)) / 2 + loss(p2, sg(z1)) / 2`` with ``p = predictor(z)``.
    Subclasses give ``predict`` (how p is made from the two projections) and
    ``regression_loss``. The projector ends in a BatchNorm without affine
    parameters, as in SimSiam's code.
    """

    def build_projector(self) -> nn.Module:
        m = self.model_cfg
        return mlp(self.feat_dim, m.projector_hidden_dim, m.projector_dim, m.projector_layers, last_bn=True)

    def predict(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def regression_loss(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, views, indices):
        # Per-sample terms on the local rows: DDP's gradient average makes them the global mean.
        _, z1 = self.encode(views[0])
        _, z2 = self.encode(views[1])
        p1, p2 = self.predict(z1, z2)
        loss = 0.5 * (self.regression_loss(p1, z2.detach()) + self.regression_loss(p2, z1.detach()))
        return loss, {}
