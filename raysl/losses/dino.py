"""DINO self-distillation (Caron et al. 2021): the loss (Eq. 3) and the center EMA (Eq. 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_batch, _check_fraction, _check_positive, _crops, _float, _shape


def dino(
    student_out: Sequence[Tensor] | Tensor,
    teacher_out: Sequence[Tensor] | Tensor,
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO self-distillation loss (Caron et al. 2021, Eq. 3 and Algorithm 1).

    For teacher (global) crops x in {x_1^g, ..., x_{V_t}^g} and student crops
    x' (all V_s crops, the global ones first, in the same order)::

        P_t(x)  = softmax((g_t(x) - c) / tau_t)      (centred, sharpened, no gradient)
        P_s(x') = softmax(g_s(x') / tau_s)
        H(a, b) = -sum_k a_k log b_k

        L = 1/|pairs| sum_{x in teacher crops} sum_{x' in student crops, x' != x} H(P_t(x), P_s(x'))

    averaged over the batch; the pairs that feed the same crop to both
    networks (student crop index == teacher crop index) are skipped.

    Args:
        student_out: V_s student logits, each [N, K] (list or [V_s, N, K]).
        teacher_out: V_t teacher logits, each [N, K] (list or [V_t, N, K]);
            crop i of the teacher is crop i of the student.
        center: [K] (or [1, K]) running center c of the teacher logits.
        student_temp: tau_s > 0 (paper: 0.1).
        teacher_temp: tau_t > 0 (paper: 0.04 warmed up to 0.07).
    """
    fn = "dino"
    students = _crops(fn, "student_out", student_out)
    teachers = _crops(fn, "teacher_out", teacher_out)
    _check_positive(fn, "student_temp", student_temp)
    _check_positive(fn, "teacher_temp", teacher_temp)
    shape = students[0].shape
    for name, crops in (("student_out", students), ("teacher_out", teachers)):
        for i, c in enumerate(crops):
            if c.shape != shape:
                raise LossInputError(
                    f"{fn}: every crop must have shape {_shape(students[0])} like student_out[0], "
                    f"got {_shape(c)} for {name}[{i}]"
                )
    _check_batch(fn, shape[0], 1)
    if not isinstance(center, Tensor) or center.numel() != shape[1] or center.ndim not in (1, 2):
        got = _shape(center) if isinstance(center, Tensor) else type(center).__name__
        raise LossInputError(f"{fn}: center must have shape [{shape[1]}] or [1, {shape[1]}], got {got}")
    center = _float(center.detach()).reshape(1, -1)
    pairs = [(t, s) for t in range(len(teachers)) for s in range(len(students)) if s != t]
    if not pairs:
        raise LossInputError(
            f"{fn}: no (teacher crop, other student crop) pair with {len(teachers)} teacher and "
            f"{len(students)} student crops; DINO needs at least two crops"
        )
    targets = [torch.softmax((_float(t.detach()) - center) / teacher_temp, dim=-1) for t in teachers]
    log_probs = [F.log_softmax(_float(s) / student_temp, dim=-1) for s in students]
    total = sum(-(targets[t] * log_probs[s]).sum(dim=-1).mean() for t, s in pairs)
    return total / len(pairs)


def dino_center_update(
    center: Tensor, teacher_out: Sequence[Tensor] | Tensor, momentum: float = 0.9
) -> Tensor:
    """DINO center EMA (Caron et al. 2021, Eq. 4), returned as a new tensor.

    ::

        c <- m c + (1 - m) 1/(V_t B) sum_{crops, i} g_t(x_i)

    over every teacher crop of the (gathered) batch. No gradient.

    Args:
        center: [K] or [1, K] current center.
        teacher_out: teacher logits, a list of [N, K] or a [V_t, N, K] / [N, K] tensor.
        momentum: m in [0, 1] (paper: 0.9).
    """
    fn = "dino_center_update"
    teachers = _crops(fn, "teacher_out", teacher_out)
    _check_fraction(fn, "momentum", momentum)
    k = teachers[0].shape[1]
    if not isinstance(center, Tensor) or center.numel() != k or center.ndim not in (1, 2):
        got = _shape(center) if isinstance(center, Tensor) else type(center).__name__
        raise LossInputError(f"{fn}: center must have shape [{k}] or [1, {k}], got {got}")
    with torch.no_grad():
        batch_center = torch.cat([t.detach() for t in teachers]).mean(dim=0)
        new = momentum * center.detach() + (1.0 - momentum) * batch_center.reshape(center.shape).to(center.dtype)
    return new
