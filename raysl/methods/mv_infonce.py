"""MV-InfoNCE (Koromilas et al. 2025, "A Principled Framework for Multi-View
Contrastive Learning", arXiv 2507.06979).

``num_views`` augmented views of every image go through the same network; one
contrastive term per image puts all of its view pairs in one numerator and
all its other similarities in the denominator, instead of averaging pairwise
two-view losses. Views cycle through the configured augmentation recipes.
"""

from raysl import losses
from raysl.methods.base import Method


class MVInfoNCE(Method):
    def training_loss(self, views, indices):
        if len(views) != self.num_views:
            raise ValueError(f"mv_infonce expects {self.num_views} views, got {len(views)}")
        z = self.gathered_projections(views)
        return losses.infonce_multiview(z, temperature=self.cfg.temperature), {}
