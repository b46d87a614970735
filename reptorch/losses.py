"""Inner-loop losses, with the reduction over a mini-batch named: the reference sums.

supervised-reptile hands TensorFlow's `minimize` the vector of per-example softmax
cross-entropies, and TensorFlow differentiates its sum:

    L_sum(B) = sum_{(x, y) in B} CE(f(x), y),      L_mean(B) = L_sum(B) / |B|.

With Adam at one batch size the scale divides out, but not everywhere: the Adam state carried from
training (batch 10) into evaluation (batch 5) then gives steps half as large relative to that
state, and plain SGD at lr 0.003 on a batch of 25 steps 25 times further than on the mean
(paper-reference section 2). `sum` is therefore the default for the paper's classification runs;
`mean` (PyTorch's usual `F.cross_entropy`) is the named alternative. Regression (the sine tasks)
keeps the mean squared error of the OpenAI post's example.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from reptorch.tree import Params

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A gradient oracle, (params, inputs, targets) -> (loss, grads); batched oracles take and give a
# leading task dim. `reptorch.adapt` consumes them; `FunctionalModel` and `reptorch.fast` make them.
LossAndGrad = Callable[[Params, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Params]]
LOSS_REDUCTIONS = ("sum", "mean")


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_b CE(logits_b, y_b): the reference's inner loss."""
    return F.cross_entropy(logits, targets, reduction="sum")


def cross_entropy_mean(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_b CE(logits_b, y_b): `F.cross_entropy`'s default."""
    return F.cross_entropy(logits, targets)


def mse_sum(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target, reduction="sum")


_LOSSES: dict[tuple[str, bool], LossFn] = {
    ("sum", False): cross_entropy_sum,
    ("mean", False): cross_entropy_mean,
    ("sum", True): mse_sum,
    ("mean", True): F.mse_loss,
}


def loss_for(reduction: str, regression: bool = False) -> LossFn:
    """The classification (softmax cross-entropy) or regression (squared error) loss."""
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(
            f"loss_reduction={reduction!r}: choose one of {', '.join(LOSS_REDUCTIONS)}"
        )
    return _LOSSES[(reduction, regression)]


def cross_entropy_reduction(loss_fn: LossFn) -> str | None:
    """'sum' or 'mean' if `loss_fn` is one of our softmax cross-entropies (the fast conv-net
    oracle computes exactly these), else None."""
    if loss_fn is cross_entropy_sum:
        return "sum"
    if loss_fn is cross_entropy_mean or loss_fn is F.cross_entropy:
        return "mean"
    return None
