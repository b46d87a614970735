"""`bench.step_floor` records the GEMMs of a step: their work must be the network's."""

import pytest
import torch

from bench.gemm import conv_net_forward_flops
from bench.step_floor import gemm_flop, recorded_gemms, replay, step_call
from bench.steps import SETTINGS, key
from reptorch.fast import fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="the fused native ops need g++")


@pytest.mark.parametrize("name", ["5w1s", "20w1s"])
def test_the_recorded_gemms_are_the_steps_forward_and_backward_products(name):
    """forward, dW and dX of every layer (the first has no dX): 3 F - F_1, counted by hand."""
    s = next(x for x in SETTINGS if key(x) == name)
    images = 4
    _, eager, call = step_call(s, images)
    gemms = recorded_gemms(eager, call)
    forward = conv_net_forward_flops(28, 1, 64, s.ways, 2, False)
    first = 2 * 14 * 14 * 9 * 1 * 64  # layer 1: 28 -> 14, one input channel
    assert gemm_flop(gemms) == images * (3 * forward - first)
    replay(gemms)()  # the operands' layouts are valid for their overloads


def test_replayed_gemms_run_on_operands_of_the_recorded_layout():
    a = torch.rand(3, 5, 4).transpose(1, 2)  # a transposed operand, as the kernels pass
    b = torch.rand(3, 5, 6)

    class Step:
        def loss_and_grad(self, x, y):
            return torch.bmm(x, y)

    gemms = recorded_gemms(Step(), (a, b))
    assert [(str(f), args[0][1:3]) for f, args, _ in gemms] == [
        ("aten.bmm.default", ((3, 4, 5), a.stride()))
    ]
    assert gemm_flop(gemms) == 2 * 3 * 4 * 5 * 6
