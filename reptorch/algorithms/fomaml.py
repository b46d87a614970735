"""First-order MAML (Finn et al. 2017; paper section 2 and the reference `FOML` class).

The update direction is the last inner step alone: D = mean_i (W_{k,i} - W_{k-1,i}), which for
SGD is -alpha mean_i g_k, the gradient of the last mini-batch at W_{k-1}. The last mini-batch is
either drawn like the others (shared tail: it may overlap them) or, with `tail_shots`, a separate
batch of samples reserved per class that never overlaps the first k - 1 (passed as `tail`).
"""

from __future__ import annotations

import torch

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms.base import MetaAlgorithm, TaskUpdate


class FOMAML(MetaAlgorithm):
    name = "fomaml"

    def task_update(self, loss_and_grad, phi, batches, state) -> TaskUpdate:
        """W_k - W_{k-1}: the last of the k inner steps."""
        kwargs = {"weight_decay": self.weight_decay}
        before = adapt(loss_and_grad, phi, batches[:-1], self.inner, state, **kwargs)
        last = adapt(loss_and_grad, before.params, batches[-1:], self.inner, before.state, **kwargs)
        losses = torch.cat([before.losses, last.losses], -1)
        return TaskUpdate(tree.sub(last.params, before.params), last.state, losses)
