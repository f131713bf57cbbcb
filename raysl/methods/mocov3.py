"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

Both views go through the online network (backbone, projector, predictor) as
queries and through the momentum teacher (backbone, projector) as keys; each
query is contrasted with the keys of the *batch* (no queue): its own image's
key of the other view is the positive, the other images' keys the negatives.
The loss is the paper's Algorithm 1, symmetrised and scaled by 2 tau::

    L = ctr(q1, k2) + ctr(q2, k1)                 (raysl.losses.mocov3)

The projector ends in a BatchNorm without affine parameters and the
predictor is a 2-layer MLP, as in the official code. The teacher follows with
a per-step cosine momentum (``ema_base`` -> ``ema_final``; paper 0.99 -> 1).

With ``model.backbone: vit_tiny`` and ``freeze_patch_embed`` (default) the
patch projection keeps its random initialisation and is never trained (paper
sec. 5.3: it removes the training instability of ViTs).

Distributed: the keys of every worker are gathered (no gradient: the teacher
has none), so each query sees the global batch's keys; the loss of a query
then depends only on its own row, so each worker computes the mean over its
own queries and DDP's gradient average gives the global mean.
"""

from __future__ import annotations

from typing import Literal

from raysl import distributed, losses
from raysl.config import Temperature
from raysl.methods.base import EMASchedule, EMATeacherMethod, predictor_mlp
from raysl.models import mlp


class MoCoV3Config(EMASchedule):
    name: Literal["mocov3"] = "mocov3"
    temperature: Temperature = 0.2  # MoCo v3 (Chen, Xie & He 2021) sec. 4; the loss is scaled by 2 tau
    # vit_tiny: a random patch projection, never trained (MoCo v3 sec. 5.3, a stability fix)
    freeze_patch_embed: bool = True


class MoCoV3(EMATeacherMethod):
    config_class = MoCoV3Config
    loss_is_sample_mean = True  # per-sample terms given the step's keys

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.predictor = predictor_mlp(model_cfg)
        if model_cfg.backbone == "vit_tiny" and method_cfg.freeze_patch_embed:
            for module in (self.backbone, self.teacher_backbone):
                module.patch_embed.requires_grad_(False)

    def build_projector(self):
        m = self.model_cfg
        return mlp(self.feat_dim, m.projector_hidden_dim, m.projector_dim, m.projector_layers, last_bn=True)

    def contrast(self, q, k_global):
        n = q.shape[0]
        return losses.mocov3(q, k_global, temperature=self.cfg.temperature, offset=distributed.rank() * n)

    def training_loss(self, views, indices):
        q1, q2 = (self.predictor(self.encode(v)[1]) for v in views[:2])
        k1, k2 = (distributed.gather_no_grad(self.teacher_encode(v)) for v in views[:2])
        loss = self.contrast(q1, k2) + self.contrast(q2, k1)
        return loss, {"ema_momentum": self.ema_momentum()}
