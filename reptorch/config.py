"""Typed meta-training configuration: the reference defaults, one preset per paper row, validation.

Defaults are those of supervised-reptile's `args.py` (what its code runs with no flags):
classes 5, shots 5, train_shots 0 (= shots), inner_batch 5, inner_iters 20, learning_rate 1e-3,
meta_step 0.1, meta_step_final 0.1, meta_batch 1, meta_iters 400000, eval_batch 5, eval_iters 50,
eval_samples 10000, eval_interval 10, weight_decay 1 (none), seed 0 (also the class split's, as
the reference; `split_seed` sets it apart); Adam inner optimiser
(beta1 = 0), inner state carried across tasks, checkpoints every 100 iterations.

The presets are the reference README commands behind the paper's tables (paper-reference section
4): meta step 1.0 annealed linearly to 0; `transductive=True` on top gives the transductive rows.
Every field is validated at construction; an error names the field, the value and the rule.
The library never parses command lines: `reptorch.cli.train` maps flags onto `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from reptorch.errors import ConfigError
from reptorch.losses import LOSS_REDUCTIONS

# The choices of every named option, defined here once; the algorithms, optimisers, CLI and
# evaluation import them.
ALGORITHMS = ("reptile", "fomaml", "maml", "joint")
INNER_OPTIMIZERS = ("adam", "sgd")
INNER_STATES = ("carry", "reset")  # the inner optimiser state across tasks
PARALLEL = ("vmap", "loop")  # a meta-batch's tasks side by side, or in sequence (exact)
OUTER = ("interpolate", "sgd", "adam")  # the reference interpolation, or a torch.optim optimiser
EVAL_INNER_STATES = ("checkpoint", "zero")  # the inner state an evaluation task starts from
DATASETS = ("omniglot", "miniimagenet", "sine", "folder:PATH")
# The fast kernels' BatchNorm / ReLU / pool passes: PyTorch's ops, or the fused native ones
# (`reptorch.fast.fused`): the same maths, different float rounding.
KERNELS = ("aten", "fused")

# Fields that may differ when a run resumes: where things are and how often they are saved,
# never what is trained.
# `chain_workers` and `kernels` too: they change only float rounding, and a resumed run may
# switch them (recorded).
RUNTIME_FIELDS = frozenset(
    {"data_dir", "device", "eval_samples", "checkpoint_every", "keep", "chain_workers", "kernels"}
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a meta-training run (field names follow the reference flags)."""

    dataset: str = "omniglot"
    data_dir: str | None = None
    allow_partial: bool = False
    classes: int = 5
    shots: int = 5
    train_shots: int = 0  # 0: same as shots
    inner_batch: int = 5
    inner_iters: int = 20
    learning_rate: float = 1e-3
    meta_step: float = 0.1
    meta_step_final: float = 0.1
    meta_batch: int = 1
    meta_iters: int = 400_000
    eval_batch: int = 5
    eval_iters: int = 50
    eval_samples: int = 10_000
    eval_interval: int = 10
    transductive: bool = False
    algorithm: str = "reptile"
    foml_tail: int | None = None
    inner_optimizer: str = "adam"  # the reference's --sgd selects "sgd"
    # The inner loss's reduction over a mini-batch (`reptorch.losses`): "sum" (the reference's,
    # for classification), "mean"; None picks the reference's: sum, or mean for sine regression.
    loss_reduction: str | None = None
    replacement: bool = False
    weight_decay: float = 1.0
    seed: int = 0
    # The seed of the random class split (Omniglot's reference split, a class-split folder);
    # None: `seed`, as the reference does (its --seed shuffles the characters too). Set it to
    # vary the training seed on a fixed split (run-to-run spread on the paper's test classes).
    split_seed: int | None = None
    inner_state: str = "carry"
    # "loop": the reference's semantics, the meta-batch's tasks in sequence threading one inner
    # state (within 2-20% of the merged mode's speed here, docs/benchmarks.md); "vmap": the tasks
    # side by side from one merged state (needed by several torchrun processes)
    parallel: str = "loop"
    outer: str = "interpolate"
    device: str = "cpu"
    # Worker threads sharing each inner step of the exact chain (`parallel='loop'` on a CPU) by
    # splitting its images (`reptorch.chain_threads`); 0: chosen for the network and the cores,
    # and recorded resolved in config.json. Runs saved before it existed ran with 1.
    chain_workers: int = 0
    # The conv blocks' BatchNorm / ReLU / pool passes (`KERNELS`); "": "fused" for the paper's
    # conv nets on the CPU where the native ops build, else "aten"; recorded resolved. Runs
    # saved before it existed ran on "aten".
    kernels: str = ""
    checkpoint_every: int = 100
    keep: int = 3  # checkpoints kept on disk

    def __post_init__(self) -> None:
        if self.loss_reduction is None:  # recorded resolved, so a checkpoint states what it used
            object.__setattr__(self, "loss_reduction", "mean" if self.is_regression else "sum")
        _validate(self)

    @property
    def effective_train_shots(self) -> int:
        """Examples per class in a training task (the reference: train_shots or shots)."""
        return self.train_shots or self.shots

    @property
    def effective_split_seed(self) -> int:
        """The seed of the class split: `split_seed`, or `seed` (the reference's)."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def is_regression(self) -> bool:
        return self.dataset == "sine"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of `to_dict`; unknown keys are a `ConfigError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown configuration field(s) {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> TrainConfig:
        """`from_dict` for a run's saved config.json: runs saved before `loss_reduction`
        existed were trained with the mean, and are read so; before `parallel` existed, merged;
        before `chain_workers` existed, with one worker; before `kernels`, on ATen's."""
        defaults = {"loss_reduction": "mean", "parallel": "vmap", "chain_workers": 1}
        defaults["kernels"] = "aten"
        return cls.from_dict({**defaults, **values})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: TrainConfig, ignore: frozenset[str] = RUNTIME_FIELDS) -> list:
        """[(field, self value, other value)] for fields that differ, runtime ones ignored."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(k, mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]]


def _paper_row(dataset: str, ways: int, shots: int, **row: Any) -> dict[str, Any]:
    common = {"meta_step": 1.0, "meta_step_final": 0.0, "meta_batch": 5, "eval_iters": 50}
    return {"dataset": dataset, "classes": ways, "shots": shots, **common, **row}


_OMNI5 = {"train_shots": 10, "inner_batch": 10, "inner_iters": 5, "learning_rate": 1e-3}
_OMNI20 = {"train_shots": 10, "inner_batch": 20, "inner_iters": 10, "learning_rate": 5e-4}
_MINI = {"train_shots": 15, "inner_batch": 10, "inner_iters": 8, "learning_rate": 1e-3}

PRESETS: dict[str, dict[str, Any]] = {
    "omniglot-5w1s": _paper_row("omniglot", 5, 1, **_OMNI5, meta_iters=100_000, eval_batch=5),
    "omniglot-5w5s": _paper_row("omniglot", 5, 5, **_OMNI5, meta_iters=100_000, eval_batch=5),
    "omniglot-20w1s": _paper_row("omniglot", 20, 1, **_OMNI20, meta_iters=200_000, eval_batch=10),
    "omniglot-20w5s": _paper_row("omniglot", 20, 5, **_OMNI20, meta_iters=200_000, eval_batch=10),
    "miniimagenet-5w1s": _paper_row(
        "miniimagenet", 5, 1, **_MINI, meta_iters=100_000, eval_batch=5
    ),
    "miniimagenet-5w5s": _paper_row(
        "miniimagenet", 5, 5, **_MINI, meta_iters=100_000, eval_batch=15
    ),
}


def resolve(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """The reference defaults, then the preset's values, then explicit `overrides` (not None)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


def _fail(field: str, value: Any, rule: str) -> None:
    raise ConfigError(f"{field}={value!r}: {rule}")


def _validate(c: TrainConfig) -> None:
    positive = ("classes", "shots", "inner_batch", "inner_iters", "meta_batch", "meta_iters")
    for name in (*positive, "eval_batch", "eval_interval", "checkpoint_every", "keep"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(name, value, "must be a positive integer")
    for name in ("train_shots", "eval_iters", "eval_samples", "chain_workers"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(name, value, "must be a non-negative integer")
    for name in ("seed", "split_seed"):
        value = getattr(c, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            _fail(name, value, "must be an integer")
    if not c.learning_rate > 0:
        _fail("learning_rate", c.learning_rate, "must be positive")
    if not c.meta_step >= 0 or not c.meta_step_final >= 0:
        _fail("meta_step", (c.meta_step, c.meta_step_final), "meta steps must be >= 0")
    if not 0 < c.weight_decay <= 1:
        _fail("weight_decay", c.weight_decay, "a multiplicative rate in (0, 1] (1: none)")
    choices = {
        "algorithm": ALGORITHMS,
        "inner_optimizer": INNER_OPTIMIZERS,
        "inner_state": INNER_STATES,
        "parallel": PARALLEL,
        "outer": OUTER,
        "loss_reduction": LOSS_REDUCTIONS,
    }
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            _fail(name, getattr(c, name), f"choose one of {', '.join(allowed)}")
    if c.kernels not in ("", *KERNELS):
        _fail("kernels", c.kernels, f"choose one of {', '.join(KERNELS)} (or leave it unset)")
    if c.dataset not in DATASETS[:-1] and not (
        c.dataset.startswith("folder:") and len(c.dataset) > len("folder:")
    ):
        _fail("dataset", c.dataset, f"choose one of {', '.join(DATASETS)}")
    if c.foml_tail is not None:
        if c.algorithm != "fomaml":
            _fail("foml_tail", c.foml_tail, "applies to --algorithm fomaml (--foml) only")
        if not 1 <= c.foml_tail < c.effective_train_shots:
            _fail(
                "foml_tail",
                c.foml_tail,
                f"must lie in 1..{c.effective_train_shots - 1} (train shots - 1)",
            )
    if c.algorithm == "joint" and c.inner_iters != 1:
        _fail("inner_iters", c.inner_iters, "joint training takes exactly 1 inner step")
    if c.algorithm in ("fomaml", "maml") and c.inner_iters < 2 and c.foml_tail is None:
        _fail("inner_iters", c.inner_iters, f"{c.algorithm} needs at least 2 inner steps")
    if c.allow_partial and c.dataset != "miniimagenet":
        _fail("allow_partial", True, "applies to the Mini-ImageNet sample only")
    if not c.device or not isinstance(c.device, str):
        _fail("device", c.device, "name a torch device such as cpu or cuda")
