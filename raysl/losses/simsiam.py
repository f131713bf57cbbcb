"""SimSiam's negative cosine similarity (Chen & He 2021, Eq. 1).
"""

from __future__ import annotations

from torch import Tensor

from raysl.losses._checks import _check_pair, _unit


def simsiam(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam loss (Chen & He 2021, Eq. 1): negative cosine similarity.

    ::

        D(p, z) = -1/N sum_i p_i/||p_i|| . z_i/||z_i||

    The caller detaches z (stop-gradient) and symmetrises:
    L = D(p1, z2)/2 + D(p2, z1)/2. Any batch size >= 1.
    """
    fn = "simsiam"
    _check_pair(fn, p, z, min_batch=1, names=("p", "z"))
    return -(_unit(p) * _unit(z)).sum(dim=1).mean()
