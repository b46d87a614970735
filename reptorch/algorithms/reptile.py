"""Reptile (Nichol, Achiam & Schulman 2018, Algorithms 1 and 2).

Serial:  phi <- phi + eps * (W - phi),            W = U^k_t(phi) for one task t.
Batched: phi <- phi + eps * mean_i (W_i - phi),   W_i = U^k_{t_i}(phi) for n tasks.
The meta direction is D = mean_i (W_i - phi); (phi - W) / alpha is the "Reptile gradient".
Serial Reptile is the batched form with a meta-batch of one task.
"""

from __future__ import annotations

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms.base import MetaAlgorithm, TaskUpdate


class Reptile(MetaAlgorithm):
    name = "reptile"

    def task_update(self, loss_and_grad, phi, batches, state) -> TaskUpdate:
        """W - phi, with W = U^k(phi): k inner steps, one per mini-batch."""
        result = adapt(
            loss_and_grad, phi, batches, self.inner, state, weight_decay=self.weight_decay
        )
        return TaskUpdate(tree.sub(result.params, phi), result.state, result.losses)
