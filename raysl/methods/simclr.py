"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

NT-Xent over the global batch: each of the 2N views has its pair as the
positive and the other 2N-2 views as negatives.

Multi-crop (``data.local_crops``, as solo-learn offers it): every crop of an
image is a positive of every other crop of it, all crops of the other images
are negatives (:func:`raysl.losses.nt_xent_multicrop`); without local crops
this is the two-view NT-Xent above.
"""

from typing import Literal

from raysl import distributed, losses
from raysl.config import MethodSection, Temperature
from raysl.methods.base import PairLossMethod


class SimCLRConfig(MethodSection):
    name: Literal["simclr"] = "simclr"
    temperature: Temperature = 0.2  # SimCLR appendix B.9: 0.2 is best on CIFAR-10


class SimCLR(PairLossMethod):
    config_class = SimCLRConfig
    supports_local_crops = True

    def pair_loss(self, z1, z2):
        return losses.nt_xent(z1, z2, temperature=self.cfg.temperature)

    def training_loss(self, views, indices):
        _, local = self.split_views(views)
        if not local:
            return super().training_loss(views, indices)
        z = [distributed.gather(c) for c in self.encode_crops(views)]
        return losses.nt_xent_multicrop(z, temperature=self.cfg.temperature), {}
