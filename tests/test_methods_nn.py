"""The nearest-neighbour methods (NNCLR, NNBYOL, NNSiam): their shared support queue and one step each.

Training on digits is covered by tests/test_methods.py (every registered method); the
losses by tests/test_losses.py; the lookup at world size 2 by tests/test_distributed.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raysl.methods import build_method
from raysl.methods.support import SupportQueue
from raysl.run_config import load_config

SMALL = ["model.width=4", "model.projector_hidden_dim=16", "model.projector_dim=8", "model.predictor_hidden_dim=16"]
NN_METHODS = ["nnclr", "nnbyol", "nnsiam"]


def test_support_queue_is_its_own_neighbour_until_filled_then_looks_up_fifo():
    queue = SupportQueue(3, 2)
    z = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    torch.testing.assert_close(queue.nearest(z), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))  # empty: itself, unit
    queue.push(torch.tensor([[0.0, 2.0], [1.0, 1.0]]))
    assert int(queue.filled) == 2 and int(queue.ptr) == 2
    r = 2**-0.5
    # cosines of (2, 0): 0 with (0, 1), 0.71 with (1, 1); of (0, -3): -1 and -0.71: both pick (1, 1)
    torch.testing.assert_close(queue.nearest(z), torch.tensor([[r, r], [r, r]]))
    queue.push(torch.tensor([[0.0, -1.0], [-1.0, 0.0]]))  # wraps: overwrites slot 0 ((0, 1))
    assert int(queue.filled) == 3 and int(queue.ptr) == 1
    torch.testing.assert_close(queue.queue, torch.tensor([[-1.0, 0.0], [r, r], [0.0, -1.0]]))
    torch.testing.assert_close(queue.nearest(z), torch.tensor([[r, r], [0.0, -1.0]]))
    queue.push(torch.arange(10.0).reshape(5, 2) + 1)  # more rows than fit: the newest 3 stay
    torch.testing.assert_close(queue.queue.sort(dim=0).values,
                               F.normalize(torch.arange(10.0).reshape(5, 2)[2:] + 1, dim=1).sort(dim=0).values)


def test_support_queue_restored_partly_filled_looks_up_only_its_rows():
    full = SupportQueue(2, 2)
    full.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    full.nearest(torch.ones(1, 2))  # now known full
    partial = SupportQueue(2, 2)
    partial.push(torch.tensor([[0.0, -1.0]]))
    full.load_state_dict(partial.state_dict())
    # the unwritten zero row would be nearer (cos 0) than (0, -1) (cos -0.71)
    torch.testing.assert_close(full.nearest(torch.ones(1, 2)), torch.tensor([[0.0, -1.0]]))


def test_support_queue_stages_only_training_steps():
    queue = SupportQueue(4, 2)
    with torch.no_grad():  # an evaluation forward
        queue.stage(torch.ones(2, 2))
    queue.flush()
    assert int(queue.filled) == 0
    queue.stage(torch.ones(2, 2))
    queue.flush()
    assert int(queue.filled) == 2
    queue.flush()  # nothing staged: nothing pushed twice
    assert int(queue.filled) == 2


def small_method(name: str, *overrides: str):
    torch.manual_seed(0)
    return build_method(load_config(None, [f"method.name={name}", *SMALL, "method.queue_size=24", *overrides]), 1)


@pytest.mark.parametrize("name", NN_METHODS)
def test_nn_method_steps_fill_the_queue_and_keep_it_in_the_state(name):
    method = small_method(name)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        views = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]
        loss, _ = method(views)
        assert torch.isfinite(loss)
        loss.backward()
        method.after_step()
        assert int(method.support.filled) == min(16 * (step + 1), 24)
    assert {"support.queue", "support.ptr", "support.filled"} <= set(method.state_dict())
    torch.testing.assert_close(method.support.queue.norm(dim=1), torch.ones(24))
    optimized = {id(p) for group in method.param_groups() for p in group["params"]}
    trained = [p for n, p in method.named_parameters() if not n.startswith("teacher_")]
    assert all(id(p) in optimized for p in trained)
    assert all(p.grad is not None for p in trained)  # the predictor too: every part is trained


def test_nnclr_pushes_the_first_views_projections():
    method = small_method("nnclr")
    views = [torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8)]
    method(views)[0].backward()
    method.after_step()
    with torch.no_grad():  # no optimizer step: the same weights, and the same batch for BatchNorm
        z1 = method.encode(views[0])[1]
    torch.testing.assert_close(method.support.queue[:16], F.normalize(z1, dim=1), rtol=1e-4, atol=1e-4)
