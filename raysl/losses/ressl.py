"""ReSSL's relational loss (Zheng et al. 2021, NeurIPS, Eq. 3-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_pair, _check_positive, _check_tensor, _shape, _unit


def ressl(q: Tensor, k: Tensor, queue: Tensor, student_temp: float = 0.1, teacher_temp: float = 0.04) -> Tensor:
    """ReSSL's relational loss (Zheng et al. 2021, NeurIPS, Eq. 3-5).

    The teacher's (weakly augmented view's) similarities to a queue of
    earlier teacher embeddings, sharpened by a low temperature, are the target
    of the student's (strongly augmented view's) similarities to the same queue::

        p_t(i) = softmax_j(k_i . queue_j / tau_t)     (constant)
        p_s(i) = softmax_j(q_i . queue_j / tau_s)
        L = 1/N sum_i H(p_t(i), p_s(i)) = -1/N sum_i sum_j p_t(i)_j log p_s(i)_j

    q, k and the queue are L2-normalised here; k and the queue are constants.

    Args:
        q: [N, D] student projections. k: [N, D] teacher projections of the same images.
        queue: [K, D] earlier teacher projections, K >= 1.
        student_temp: tau_s (paper: 0.1). teacher_temp: tau_t (paper: 0.04).
    """
    fn = "ressl"
    _check_pair(fn, q, k, min_batch=1, names=("q", "k"))
    _check_tensor(fn, "queue", queue, 2)
    if queue.shape[1] != q.shape[1] or queue.shape[0] < 1:
        raise LossInputError(f"{fn}: queue must have shape [K, {q.shape[1]}] with K >= 1, got {_shape(queue)}")
    _check_positive(fn, "student_temp", student_temp)
    _check_positive(fn, "teacher_temp", teacher_temp)
    uqueue = _unit(queue.detach())
    target = torch.softmax(_unit(k.detach()) @ uqueue.T / teacher_temp, dim=1)
    log_p = F.log_softmax(_unit(q) @ uqueue.T / student_temp, dim=1)
    return -(target * log_p).sum(dim=1).mean()
