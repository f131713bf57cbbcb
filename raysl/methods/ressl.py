"""ReSSL (Zheng et al. 2021, NeurIPS, "ReSSL: Relational Self-Supervised Learning with Weak
Augmentation").

Not the embeddings but their *relations* are matched: the momentum teacher
embeds a weakly augmented view, the student a strongly augmented one, and the
student's similarity distribution over a queue of earlier teacher embeddings
(temperature ``student_temp``, 0.1) is trained towards the teacher's, which is
sharper (``teacher_temp``, 0.04) (:func:`raysl.losses.ressl`). The teacher
follows with momentum ``ema_base`` -> ``ema_final``; the queue of
``queue_size`` teacher embeddings is the nearest-neighbour methods'
:class:`~raysl.methods.support.SupportQueue`, pushed after each step.

Views: the teacher sees view 0 and the student view 1, so ``data.augment`` as
a list gives the weak recipe first (crop and flip only, as the paper) and the
strong one second; with a preset both views are strong. Until the first push
the queue is empty and the relations are to the step's own teacher
embeddings (the official code starts from random vectors).

Distributed: every worker pushes the gathered teacher embeddings of the
global batch, so every worker holds the same queue; the loss is a mean of
per-sample terms given the queue, computed on each worker's own rows (DDP
averages).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from raysl import distributed, losses
from raysl.config import Temperature
from raysl.methods.base import EMASchedule, EMATeacherMethod
from raysl.methods.support import SupportQueue


class ReSSLConfig(EMASchedule):
    name: Literal["ressl"] = "ressl"
    queue_size: Annotated[int, Field(ge=1)] = 4096
    student_temp: Temperature = 0.1
    teacher_temp: Temperature = 0.04


class ReSSL(EMATeacherMethod):
    config_class = ReSSLConfig
    loss_is_sample_mean = True  # per-sample terms given the step's teacher and queue

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.memory = SupportQueue(method_cfg.queue_size, self.projection_dim)

    def relation_set(self, keys: torch.Tensor) -> torch.Tensor:
        """The queue rows written so far; ``keys`` (this step's global teacher embeddings) while it is empty."""
        filled = int(self.memory.filled)
        return self.memory.queue[:filled] if filled else keys

    def training_loss(self, views, indices):
        weak, strong = views[0], views[1]
        k = self.teacher_encode(weak)
        q = self.encode(strong)[1]
        anchors = self.relation_set(distributed.gather_no_grad(k))
        loss = losses.ressl(q, k, anchors, student_temp=self.cfg.student_temp, teacher_temp=self.cfg.teacher_temp)
        self.memory.stage(k)
        return loss, {"ema_momentum": self.ema_momentum()}

    def after_step(self) -> None:
        super().after_step()
        self.memory.flush()
