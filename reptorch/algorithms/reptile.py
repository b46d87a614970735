"""Reptile (Nichol, Achiam & Schulman 2018, Algorithm 2; Algorithm 1 is the case n = 1).

The paper's pseudo-code, line for line, beside the code that runs it:

    Initialize phi                                    phi = model.init_params()
    for iteration = 1, 2, ... do                      MetaLearner.step (reptorch.meta), once each
        Sample tasks tau_1, ..., tau_n                TaskSampler.sample_train: xs (n, k, B, ...)
        for i = 1, 2, ..., n do                       MetaAlgorithm.sequential (reptorch.algorithms
                                                      .base): task after task, inner state carried
            Compute W_i = SGD(L_tau_i, phi, k)        Reptile.task_update: adapt(...) below, k
                                                      steps of the inner optimiser from phi
        end for
        Update phi <- phi + eps (1/n) sum_i (W_i - phi)   D = mean_i (W_i - phi) (base), then
                                                      Interpolation.update: phi + eps_t D
    end for

The meta direction is D = mean_i (W_i - phi); (phi - W) / alpha is the "Reptile gradient", which
an outer optimiser (`OuterOptimizer`) may take instead. As the reference code, the inner
optimiser is Adam (beta1 = 0) whose state threads through the tasks, or plain SGD.
"""

from __future__ import annotations

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms.base import MetaAlgorithm, TaskUpdate


class Reptile(MetaAlgorithm):
    name = "reptile"
    updates_from_weights = True

    def weights_update(self, weights, phi):
        """W - phi."""
        return tree.sub(weights, phi)

    def task_update(self, loss_and_grad, phi, batches, state) -> TaskUpdate:
        """W - phi, with W = U^k(phi): k inner steps, one per mini-batch."""
        result = adapt(
            loss_and_grad, phi, batches, self.inner, state, weight_decay=self.weight_decay
        )
        return TaskUpdate(self.weights_update(result.params, phi), result.state, result.losses)
