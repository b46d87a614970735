"""reptorch: Reptile meta-learning (Nichol, Achiam & Schulman, 2018) in PyTorch.

The public core, one import away::

    from reptorch import Reptile, MetaLearner, FunctionalModel, Adam, Interpolation, OmniglotNet

Names are imported on first use (PEP 562), so `import reptorch` (and the CLI's start) stays as
cheap as before; `reptorch.<module>` remains the way to everything else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    "Reptile": "reptorch.algorithms",
    "FOMAML": "reptorch.algorithms",
    "MAML": "reptorch.algorithms",
    "JointTraining": "reptorch.algorithms",
    "MetaLearner": "reptorch.meta",
    "FunctionalModel": "reptorch.functional",
    "Adam": "reptorch.inner_optim",
    "SGD": "reptorch.inner_optim",
    "Interpolation": "reptorch.outer",
    "OuterOptimizer": "reptorch.outer",
    "cross_entropy_sum": "reptorch.losses",
    "cross_entropy_mean": "reptorch.losses",
    "OmniglotNet": "reptorch.models",
    "MiniImageNetNet": "reptorch.models",
    "load_splits": "reptorch.data.registry",
    "TaskSampler": "reptorch.data.tasks",
}
_SUBMODULES = ("pretrained",)

__all__ = [
    "FOMAML",
    "MAML",
    "SGD",
    "Adam",
    "FunctionalModel",
    "Interpolation",
    "JointTraining",
    "MetaLearner",
    "MiniImageNetNet",
    "OmniglotNet",
    "OuterOptimizer",
    "Reptile",
    "TaskSampler",
    "__version__",
    "cross_entropy_mean",
    "cross_entropy_sum",
    "load_splits",
    "pretrained",
]

if TYPE_CHECKING:
    from reptorch import pretrained
    from reptorch.algorithms import FOMAML, MAML, JointTraining, Reptile
    from reptorch.data.registry import load_splits
    from reptorch.data.tasks import TaskSampler
    from reptorch.functional import FunctionalModel
    from reptorch.inner_optim import SGD, Adam
    from reptorch.losses import cross_entropy_mean, cross_entropy_sum
    from reptorch.meta import MetaLearner
    from reptorch.models import MiniImageNetNet, OmniglotNet
    from reptorch.outer import Interpolation, OuterOptimizer


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
