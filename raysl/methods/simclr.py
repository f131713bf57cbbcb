"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

NT-Xent over the global batch: each of the 2N views has its pair as the
positive and the other 2N-2 views as negatives.
"""

from raysl import losses
from raysl.methods.base import PairLossMethod


class SimCLR(PairLossMethod):
    def pair_loss(self, z1, z2):
        return losses.nt_xent(z1, z2, temperature=self.cfg.temperature)
