"""The baseline: Reptile written as a typical PyTorch user would, serially, with one nn.Module.

One `OmniglotNet`, one `torch.optim.Adam(betas=(0, 0.999))` whose state carries across tasks (as
the reference does), weights restored with `load_state_dict` before each task, the adapted weights
copied out, and the Reptile interpolation phi <- phi + eps * (mean_i W_i - phi) at the end.
Kept here only as the yardstick of the speed benchmark.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SerialReptile:
    """Straightforward serial Reptile on an `nn.Module` (`torch.optim.Adam` inner optimiser)."""

    def __init__(self, model: nn.Module, lr: float, meta_step: float = 1.0) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999))
        self.meta_step = meta_step

    def step(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        """xs (T, k, B, C, H, W), ys (T, k, B): k inner Adam steps per task, then interpolate."""
        old = {k: v.clone() for k, v in self.model.state_dict().items()}
        new = []
        for task in range(xs.shape[0]):
            self.model.load_state_dict(old)
            for x, y in zip(xs[task], ys[task], strict=True):
                loss = F.cross_entropy(self.model(x), y)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
            new.append({k: v.clone() for k, v in self.model.state_dict().items()})
        average = {k: torch.stack([w[k] for w in new]).mean(0) for k in old}
        self.model.load_state_dict(
            {k: old[k] + self.meta_step * (average[k] - old[k]) for k in old}
        )
