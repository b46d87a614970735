"""Meta-learning algorithms: each maps phi and a meta-batch of tasks to a meta direction D."""

from reptorch.algorithms.base import MetaAlgorithm, MetaStep, TaskUpdate
from reptorch.algorithms.fomaml import FOMAML
from reptorch.algorithms.joint import JointTraining
from reptorch.algorithms.maml import MAML
from reptorch.algorithms.reptile import Reptile

ALGORITHMS: dict[str, type[MetaAlgorithm]] = {
    "reptile": Reptile,
    "fomaml": FOMAML,
    "maml": MAML,
    "joint": JointTraining,
}

__all__ = [
    "ALGORITHMS",
    "FOMAML",
    "MAML",
    "JointTraining",
    "MetaAlgorithm",
    "MetaStep",
    "Reptile",
    "TaskUpdate",
]
