"""MV-InfoNCE (Koromilas et al. 2025, "A Principled Framework for Multi-View
Contrastive Learning", arXiv 2507.06979).

``num_views`` augmented views of every image go through the same network; one
contrastive term per image puts all of its view pairs in one numerator and
all its other similarities in the denominator, instead of averaging pairwise
two-view losses. Views cycle through the configured augmentation recipes.
"""

from typing import Annotated, Literal

from pydantic import Field

from raysl import losses
from raysl.config import MethodSection, Temperature
from raysl.methods.base import Method


class MVInfoNCEConfig(MethodSection):
    name: Literal["mv_infonce"] = "mv_infonce"
    temperature: Temperature = 0.1
    num_views: Annotated[int, Field(ge=2, le=16)] = 4


class MVInfoNCE(Method):
    config_class = MVInfoNCEConfig

    def training_loss(self, views, indices):
        if len(views) != self.num_views:
            raise ValueError(f"mv_infonce expects {self.num_views} views, got {len(views)}")
        z = self.gathered_projections(views)
        return losses.infonce_multiview(z, temperature=self.cfg.temperature), {}
