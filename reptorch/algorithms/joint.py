"""Joint training: Reptile with k = 1, i.e. SGD on the mixture of all tasks (paper section 5).

With one inner SGD step, W_i - phi = -alpha g_i(phi), so phi <- phi - eps alpha mean_i g_i(phi):
one step of SGD (learning rate eps * alpha) on the expected loss over tasks. It learns the mean
prediction (f = 0 on sine waves) rather than an initialisation that adapts fast.
"""

from __future__ import annotations

from reptorch.algorithms.base import MetaStep
from reptorch.algorithms.reptile import Reptile
from reptorch.errors import ConfigError


class JointTraining(Reptile):
    name = "joint"

    def meta_step(self, phi, xs, ys, inner_state, tail=None) -> MetaStep:
        if xs.shape[1] != 1 or tail is not None:
            raise ConfigError(
                f"joint training takes exactly 1 inner step per task, got {xs.shape[1]}: "
                "set --inner-iters 1"
            )
        return super().meta_step(phi, xs, ys, inner_state)
