"""MAML, second order (Finn et al. 2017), as a baseline.

g_MAML = d/dphi L_{B_k}(U^{k-1}(phi)) = prod_{j<k} (I - alpha H_j) g_k  (for SGD inner steps):
the gradient of the last mini-batch's loss after k - 1 differentiable inner steps, back through
them to phi. To share the outer update with Reptile, the meta direction is
D = -alpha * mean_i g_MAML,i, the same scale as FOMAML's D = mean_i (W_k - W_{k-1}) = -alpha g_k
for SGD; an outer optimiser receives -D = alpha * g_MAML as its gradient.
Every task starts from a fresh inner optimiser state, as in MAML.
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value, vmap

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms.base import MetaAlgorithm, MetaStep, TaskUpdate


class MAML(MetaAlgorithm):
    name = "maml"
    first_order = False

    def __init__(self, *args, **kwargs) -> None:
        kwargs["inner_state"] = "reset"
        super().__init__(*args, **kwargs)

    def meta_gradient(self, phi, xs, ys, tail_x, tail_y) -> tuple[dict, torch.Tensor]:
        """(g_MAML, losses (k,)) for one task, differentiating through the k - 1 inner steps."""

        def tail_loss(params):
            batches = zip(xs, ys, strict=True)
            state = self.inner.init(params)
            inner = adapt(
                self.model.loss_and_grad,
                params,
                batches,
                self.inner,
                state,
                differentiable=True,
                weight_decay=self.weight_decay,
            )
            return self.model.loss(inner.params, tail_x, tail_y), inner.losses

        grads, (loss, inner_losses) = grad_and_value(tail_loss, has_aux=True)(phi)
        return grads, torch.cat([inner_losses.detach(), loss.detach()[None]])

    def task_update(self, loss_and_grad, phi, batches, state) -> TaskUpdate:
        xs, ys = zip(*batches[:-1], strict=True) if len(batches) > 1 else ((), ())
        grads, losses = self.meta_gradient(phi, xs, ys, *batches[-1])
        return TaskUpdate(tree.scale(grads, -self.inner.lr), state, losses)

    def side_by_side(self, phi, xs, ys, inner_state, tail) -> MetaStep:
        """All T tasks' meta-gradients at once (vmap over tasks)."""
        if tail is None:  # shared tail: the k-th mini-batch drawn like the others
            xs, ys, tail = xs[:, :-1], ys[:, :-1], (xs[:, -1], ys[:, -1])
        grads, losses = vmap(self.meta_gradient, in_dims=(None, 0, 0, 0, 0))(phi, xs, ys, *tail)
        return MetaStep(tree.scale(self.task_mean(grads), -self.inner.lr), inner_state, losses)
