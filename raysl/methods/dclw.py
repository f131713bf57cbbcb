"""DCLW (Yeh et al. 2022, ECCV, "Decoupled Contrastive Learning"), Eq. 7.

DCL whose positive term is weighted by a von Mises-Fisher weight with
concentration ``sigma``: hard positives (views that disagree) count more.
"""

from raysl import losses
from raysl.methods.base import PairLossMethod


class DCLW(PairLossMethod):
    def pair_loss(self, z1, z2):
        return losses.dclw(z1, z2, temperature=self.cfg.temperature, sigma=self.cfg.sigma)
