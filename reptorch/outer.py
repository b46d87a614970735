"""The outer (meta) update: how phi moves along the meta direction D.

- `Interpolation` (the reference): phi <- phi + eps_t * D, eps_t annealed linearly.
- `OuterOptimizer`: -D handed to a `torch.optim` optimiser as phi's gradient (the post's
  suggestion: "the Reptile gradient can be handed to Adam"). Its learning rate follows the same
  eps_t schedule; SGD with lr eps_t is then exactly the interpolation.
"""

from __future__ import annotations

from typing import Any

import torch

from reptorch.config import OUTER
from reptorch.errors import ConfigError
from reptorch.schedule import linear_meta_step
from reptorch.tree import Params


class Interpolation:
    """phi <- phi + eps_t * D  (reference `interpolate_vars(old, new, eps)` on D = mean W - phi)."""

    name = "interpolate"

    def __init__(self, meta_step: float, meta_step_final: float, meta_iters: int) -> None:
        self.meta_step, self.meta_step_final, self.meta_iters = (
            meta_step,
            meta_step_final,
            meta_iters,
        )

    def step_size(self, iteration: int) -> float:
        return linear_meta_step(iteration, self.meta_iters, self.meta_step, self.meta_step_final)

    def update(self, phi: Params, direction: Params, iteration: int) -> Params:
        eps = self.step_size(iteration)
        return {name: value + eps * direction[name] for name, value in phi.items()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class OuterOptimizer(Interpolation):
    """A `torch.optim` optimiser over phi, fed the pseudo-gradient -D, lr = eps_t."""

    def __init__(
        self,
        name: str,
        phi: Params,
        meta_step: float,
        meta_step_final: float,
        meta_iters: int,
        **options: Any,
    ) -> None:
        super().__init__(meta_step, meta_step_final, meta_iters)
        classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
        if name not in classes:
            raise ConfigError(
                f"unknown outer optimiser {name!r}: choose one of {', '.join(classes)} "
                f"(or {OUTER[0]}, the reference interpolation)"
            )
        self.name = name
        self.names = list(phi)
        self.leaves = [torch.nn.Parameter(phi[n].detach().clone()) for n in self.names]
        self.optimizer = classes[name](self.leaves, lr=meta_step, **options)

    def update(self, phi: Params, direction: Params, iteration: int) -> Params:
        with torch.no_grad():
            for name, leaf in zip(self.names, self.leaves, strict=True):
                leaf.copy_(phi[name])
                leaf.grad = -direction[name]
        for group in self.optimizer.param_groups:
            group["lr"] = self.step_size(iteration)
        self.optimizer.step()
        return {
            name: leaf.detach().clone() for name, leaf in zip(self.names, self.leaves, strict=True)
        }

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
