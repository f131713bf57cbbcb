"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Self-distillation without labels: the student's softmax over ``out_dim``
prototypes is trained to match the momentum teacher's, which is centred (a
running mean ``c`` of the teacher's logits, momentum ``center_momentum``) and
sharpened (temperature ``teacher_temp``, warmed up linearly to
``teacher_temp_final`` over the first ``teacher_temp_warmup`` of training).
Centring alone would flatten the teacher, sharpening alone would collapse it
to one prototype; together they balance. Each view's teacher output is the
target of the student's output on the *other* view.

The head is the projector MLP down to a bottleneck (``projector_dim``), L2
normalisation, then a weight-normalised linear layer to ``out_dim`` whose rows
have unit norm (DINO's ``norm_last_layer``). The teacher follows the student
with momentum ``ema_base`` -> ``ema_final``.

Multi-crop (``data.local_crops``, DINO sec. 3.1): the teacher sees only the two
global views, the student every crop (global views, then the smaller local
crops, which go through the student in one batch); the loss averages
H(P_t(global i), P_s(crop j)) over every pair with j != i, and the centre
follows the teacher's outputs on the global views only.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from raysl import distributed, losses, schedules
from raysl.config import MethodSection, Momentum, Probability, Temperature
from raysl.methods.base import EMATeacherMethod


class Prototypes(nn.Module):
    """Cosine similarity of the L2-normalised input to ``out_dim`` unit-norm prototype vectors."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


class DINOConfig(MethodSection):
    name: Literal["dino"] = "dino"
    student_temp: Temperature = 0.1
    teacher_temp: Temperature = 0.04
    teacher_temp_final: Temperature = 0.07
    teacher_temp_warmup: Probability = 0.3  # fraction of training
    center_momentum: Momentum = 0.9
    ema_base: Momentum = 0.996
    ema_final: Momentum = 1.0
    out_dim: Annotated[int, Field(ge=2)] = 1024


class DINO(EMATeacherMethod):
    config_class = DINOConfig
    loss_is_sample_mean = True  # per-sample terms given the step's teacher, queue or centre
    supports_local_crops = True

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.register_buffer("center", torch.zeros(1, method_cfg.out_dim))

    def build_projector(self) -> nn.Module:
        # [bottleneck MLP, prototypes]; the teacher copies both.
        return nn.Sequential(super().build_projector(), Prototypes(self.model_cfg.projector_dim, self.cfg.out_dim))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.backbone(x)
        return {"backbone": h, "projector": self.projector[0](h)}  # the bottleneck, not the logits

    def teacher_temperature(self) -> float:
        c = self.cfg
        return schedules.teacher_temperature(self.progress, c.teacher_temp, c.teacher_temp_final, c.teacher_temp_warmup)

    def training_loss(self, views, indices):
        global_views, _ = self.split_views(views)
        student = self.encode_crops(views)  # global views first, then the local crops
        teacher = [self.teacher_encode(v) for v in global_views]
        temp = self.teacher_temperature()
        loss = losses.dino(student, teacher, self.center, student_temp=self.cfg.student_temp, teacher_temp=temp)
        if torch.is_grad_enabled():
            # Eq. 4 over the global batch: the mean of the workers' batch means (equal batch sizes).
            batch_mean = distributed.all_reduce_mean(torch.cat(teacher).mean(dim=0, keepdim=True))
            self.center.copy_(losses.dino_center_update(self.center, [batch_mean], self.cfg.center_momentum))
        return loss, {"teacher_temp": temp, "ema_momentum": self.ema_momentum()}
