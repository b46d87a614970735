"""MAML, second order (Finn et al. 2017), as a baseline.

g_MAML = d/dphi L_{B_k}(U^{k-1}(phi)) = prod_{j<k} (I - alpha H_j) g_k  (for SGD inner steps):
the gradient of the last mini-batch's loss after k - 1 differentiable inner steps, back through
them to phi. To share the outer update with Reptile, the meta direction is
D = -alpha * mean_i g_MAML,i, the same scale as FOMAML's D = mean_i (W_k - W_{k-1}) = -alpha g_k
for SGD; an outer optimiser receives -D = alpha * g_MAML as its gradient.
The inner optimiser state is not carried (each task starts fresh), as in MAML.
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms.base import MetaAlgorithm, TaskUpdate


class MAML(MetaAlgorithm):
    name = "maml"

    def __init__(self, *args, **kwargs) -> None:
        kwargs["inner_state"] = "reset"
        kwargs["parallel"] = "loop"  # a baseline: clarity over speed
        super().__init__(*args, **kwargs)

    def meta_gradient(self, phi, batches, state) -> tuple[dict, torch.Tensor]:
        """(g_MAML, L_{B_k}(W_{k-1})) for one task, by differentiating through the inner loop."""

        def tail_loss(params):
            inner = adapt(
                self.model.loss_and_grad,
                params,
                batches[:-1],
                self.inner,
                state,
                differentiable=True,
                weight_decay=self.weight_decay,
            )
            x, y = batches[-1]
            return self.model.loss(inner.params, x, y), inner.losses

        grads, (loss, inner_losses) = grad_and_value(tail_loss, has_aux=True)(phi)
        return grads, torch.cat([inner_losses.detach(), loss.detach()[None]])

    def task_update(self, loss_and_grad, phi, batches, state) -> TaskUpdate:
        grads, losses = self.meta_gradient(phi, batches, state)
        return TaskUpdate(tree.scale(grads, -self.inner.lr), state, losses)
