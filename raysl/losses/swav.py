"""SwAV's swapped prediction loss (Caron et al. 2020, Eq. 1-2, multi-crop in Sec. 3.2).

The codes come from :func:`raysl.losses.ops.sinkhorn_knopp`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_positive, _crops, _float, _shape


def swav(scores: Sequence[Tensor] | Tensor, codes: Sequence[Tensor] | Tensor, temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction loss (Caron et al. 2020, Eq. 1-2, multi-crop in Sec. 3.2).

    Crop v predicts the code q_i of every other crop i it can take from (the
    global crops, whose codes Sinkhorn computed)::

        p_v = softmax(z_v^T C / tau)
        L = 1/|Q| sum_{i in codes} 1/(V - 1) sum_{v != i} -1/N sum_n sum_k q_i[n, k] log p_v[n, k]

    Args:
        scores: V crops' prototype scores z^T C, [N, K] each (list or [V, N, K]), the
            global crops first in the order of ``codes``.
        codes: the codes of the first len(codes) crops, [N, K] each (targets, no gradient).
        temperature: tau > 0 (paper: 0.1).
    """
    fn = "swav"
    crops = _crops(fn, "scores", scores)
    targets = _crops(fn, "codes", codes)
    _check_positive(fn, "temperature", temperature)
    if len(crops) < 2 or len(targets) > len(crops):
        raise LossInputError(
            f"{fn}: needs at least two crops and at most one code per crop, got {len(crops)} crops and "
            f"{len(targets)} codes"
        )
    for name, group in (("scores", crops), ("codes", targets)):
        for i, c in enumerate(group):
            if c.shape != crops[0].shape:
                raise LossInputError(
                    f"{fn}: every crop and code must have shape {_shape(crops[0])} like scores[0], "
                    f"got {_shape(c)} for {name}[{i}]"
                )
    log_p = [F.log_softmax(_float(s) / temperature, dim=-1) for s in crops]
    total = 0.0
    for i, q in enumerate(targets):
        q = q.detach().to(log_p[0].dtype)
        total = total + sum(-(q * log_p[v]).sum(dim=-1).mean() for v in range(len(crops)) if v != i) / (
            len(crops) - 1
        )
    return total / len(targets)
