"""DCL (Yeh et al. 2022, ECCV, "Decoupled Contrastive Learning").

NT-Xent with the positive pair removed from the denominator (Eq. 6): the
negative-positive coupling that makes SimCLR need large batches goes away.
"""

from raysl import losses
from raysl.methods.base import PairLossMethod


class DCL(PairLossMethod):
    def pair_loss(self, z1, z2):
        return losses.dcl(z1, z2, temperature=self.cfg.temperature)
