"""The paper's Taylor analysis (section 5) measured on the library's own algorithms.

At a fixed phi, with plain SGD of step alpha and disjoint mini-batches, the paper predicts

    E[g_MAML]    = AvgGrad - 2(k-1) alpha AvgGradInner        + O(alpha^2)
    E[g_FOMAML]  = AvgGrad -  (k-1) alpha AvgGradInner        + O(alpha^2)
    E[g_Reptile] = k AvgGrad - k(k-1)/2 alpha AvgGradInner    + O(alpha^2)

with AvgGrad = E[g_1] and AvgGradInner = E[H_2 g_1]. Here g_alg = -D / alpha for the meta
direction D that `reptorch.algorithms` returns with `SGD(alpha)` (Reptile: (phi - W) / alpha).

Estimators (Monte Carlo over tasks and mini-batches, float64):
- every sample is one task with `max(ks)` disjoint mini-batches B_1..B_m; an algorithm with k steps
  uses B_1..B_k. The same samples serve every algorithm, k and alpha (common random numbers).
- AvgGrad: the mean over samples of (1/m) sum_i g_i(phi) (each batch's gradient at phi: all m are
  draws of g_1); AvgGradInner: the mean of (1/(m(m-1))) sum_{i != j} H_i g_j, Hessian-vector
  products by reverse-over-reverse `torch.func.grad` of g_i . v.
- `rotate` (default): each task's algorithms run on all m cyclic orders of its batches, so every
  batch takes every position once. The batches are exchangeable, so this stays an unbiased
  estimate of E[g] (an average over some of the orders); it makes the zeroth-order term equal
  a_paper * AvgGrad task by task (each g_i(phi) counted as often as the AvgGrad estimator counts
  it), which removes the Monte Carlo noise that would otherwise enter b as noise / alpha. What is
  left to measure is the first-order term, whose pairs (i, j) the rotations do not balance in
  general (except FOMAML and MAML at k = m), with its Monte Carlo error.
- samples are processed in groups; each group gives one batch mean of every quantity.
Fit: for each algorithm, k and alpha, (a, b) minimise || E[g] - a AvgGrad - b alpha AvgGradInner ||
over the parameter coordinates (least squares on two vector bases). Standard errors: bootstrap
over the group means (each resample recomputes both bases and the expected update, then refits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, vmap

from reptorch.algorithms import ALGORITHMS
from reptorch.errors import ConfigError
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import SGD
from reptorch.tree import Params

THEORY_ALGORITHMS = ("reptile", "fomaml", "maml")
# A sampler: (tasks, mini-batches per task, generator) -> xs (T, m, B, ...), ys (T, m, B), the m
# mini-batches of each task disjoint.
Sampler = Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def paper_coefficients(algorithm: str, k: int) -> tuple[float, float]:
    """(a, b) of E[g] = a AvgGrad + b alpha AvgGradInner in the paper's table."""
    if algorithm == "maml":
        return 1.0, -2.0 * (k - 1)
    if algorithm == "fomaml":
        return 1.0, -(k - 1.0)
    if algorithm == "reptile":
        return float(k), -k * (k - 1) / 2.0
    raise ConfigError(f"algorithm={algorithm!r}: choose one of {', '.join(THEORY_ALGORITHMS)}")


@dataclass(frozen=True)
class TheoryConfig:
    ks: tuple[int, ...] = (2, 3, 4)
    alphas: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    algorithms: tuple[str, ...] = THEORY_ALGORITHMS
    tasks: int = 4_000
    group: int = 100  # tasks per group mean
    bootstrap: int = 1000
    rotate: bool = True  # run every cyclic order of each task's m batches (see the module doc)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 2:
            raise ConfigError(f"ks={self.ks}: the Taylor table needs k >= 2 inner steps")
        if not self.alphas or min(self.alphas) <= 0:
            raise ConfigError(f"alphas={self.alphas}: inner step sizes must be positive")
        for name in self.algorithms:
            paper_coefficients(name, 2)
        if self.group < 1 or self.tasks < 2 * self.group:
            raise ConfigError(
                f"tasks={self.tasks}, group={self.group}: need at least two groups of >= 1 task "
                "for standard errors; raise --tasks or lower --group"
            )
        if self.bootstrap < 2:
            raise ConfigError(f"bootstrap={self.bootstrap}: need at least 2 resamples")

    @property
    def groups(self) -> int:
        return self.tasks // self.group


@dataclass(frozen=True)
class Problem:
    """A fixed phi, its model (float64) and a sampler of tasks with disjoint mini-batches."""

    model: FunctionalModel
    phi: Params
    sample: Sampler
    name: str = "problem"


def flatten(params: Params) -> torch.Tensor:
    """All leaves of a parameter tree as one vector (in the tree's order)."""
    return torch.cat([v.reshape(-1) for v in params.values()])


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[n] * b[n]).sum() for n in a)  # type: ignore[return-value]


def basis_terms(
    model: FunctionalModel, phi: Params, xs: torch.Tensor, ys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group means of the AvgGrad and AvgGradInner estimators (flat vectors).

    Per task with m disjoint batches: (1/m) sum_i g_i and (1/(m(m-1))) sum_i H_i (sum_{j!=i} g_j),
    g_i = grad L_{B_i}(phi), H_i its Hessian; H_i v = grad_phi (g_i(phi) . v), reverse over reverse.
    """
    m = xs.shape[1]
    gradient = grad(model.loss)

    def per_task(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads = [gradient(phi, x[i], y[i]) for i in range(m)]
        total = {n: sum(g[n] for g in grads) for n in phi}
        inner = {n: torch.zeros_like(v) for n, v in phi.items()}
        for i in range(m):
            others = {n: total[n] - grads[i][n] for n in phi}
            hvp = grad(lambda p, i=i, v=others: _dot(gradient(p, x[i], y[i]), v))(phi)
            inner = {n: inner[n] + hvp[n] for n in phi}
        avg = flatten({n: total[n] / m for n in phi})
        return avg, flatten({n: inner[n] / (m * (m - 1)) for n in phi})

    avg, inner = vmap(per_task)(xs, ys)
    return avg.mean(0), inner.mean(0)


def expected_update(
    problem: Problem, algorithm: str, k: int, alpha: float, xs: torch.Tensor, ys: torch.Tensor
) -> torch.Tensor:
    """Mean over the group's tasks of g_alg = -D / alpha, D from the library's algorithm run
    with `SGD(alpha)` on the first k mini-batches (FOMAML's last batch drawn like the others)."""
    algo = ALGORITHMS[algorithm](
        problem.model,
        SGD(alpha),
        inner_state="reset",
        parallel="vmap",  # no inner state (SGD, reset): the same semantics as "loop"
        batched_loss_and_grad=problem.model.vmap_loss_and_grad(),
    )
    step = algo.meta_step(problem.phi, xs[:, :k], ys[:, :k], algo.init_inner_state(problem.phi))
    return flatten(step.direction) / -alpha


def rotations(batches: torch.Tensor) -> torch.Tensor:
    """(T, m, ...) -> (m T, m, ...): each task's m mini-batches in each of their m cyclic orders
    (B_1..B_m, B_2..B_m B_1, ...), rotation-major."""
    return torch.cat([batches.roll(-r, dims=1) for r in range(batches.shape[1])])


@dataclass
class Measurements:
    """Group means: bases (G, P) and expected updates {(algorithm, k, alpha): (G, P)}."""

    avg_grad: torch.Tensor
    avg_grad_inner: torch.Tensor
    updates: dict[tuple[str, int, float], torch.Tensor]


def measure(
    problem: Problem, config: TheoryConfig, progress: Callable[[int], None] | None = None
) -> Measurements:
    """Draws `config.groups` groups of tasks and measures every quantity on each."""
    generator = torch.Generator().manual_seed(config.seed)
    m = max(config.ks)
    bases: list[tuple[torch.Tensor, torch.Tensor]] = []
    updates: dict[tuple[str, int, float], list[torch.Tensor]] = {}
    for g in range(config.groups):
        xs, ys = problem.sample(config.group, m, generator)
        bases.append(basis_terms(problem.model, problem.phi, xs, ys))
        if config.rotate:
            xs, ys = rotations(xs), rotations(ys)
        for name in config.algorithms:
            for k in config.ks:
                for alpha in config.alphas:
                    value = expected_update(problem, name, k, alpha, xs, ys)
                    updates.setdefault((name, k, alpha), []).append(value)
        if progress is not None:
            progress(g + 1)
    return Measurements(
        torch.stack([b[0] for b in bases]),
        torch.stack([b[1] for b in bases]),
        {key: torch.stack(values) for key, values in updates.items()},
    )


def fit(
    y: torch.Tensor, avg_grad: torch.Tensor, avg_grad_inner: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least squares y ~ a AvgGrad + b alpha AvgGradInner over coordinates, batched over rows.

    y, avg_grad, avg_grad_inner: (R, P). Returns a (R,), b (R,) and the relative residual
    ||y - fit|| / ||y|| (R,).
    """
    basis = torch.stack([avg_grad, alpha * avg_grad_inner], -1)  # (R, P, 2)
    coef = torch.linalg.lstsq(basis, y.unsqueeze(-1)).solution.squeeze(-1)  # (R, 2)
    residual = y - (basis @ coef.unsqueeze(-1)).squeeze(-1)
    return coef[:, 0], coef[:, 1], residual.norm(dim=-1) / y.norm(dim=-1)


def relative_gap(
    y: torch.Tensor, avg_grad: torch.Tensor, avg_grad_inner: torch.Tensor, ab: tuple, alpha: float
) -> float:
    """|| y - (a AvgGrad + b alpha AvgGradInner) || / ||y|| for given coefficients."""
    a, b = ab
    return float((y - a * avg_grad - b * alpha * avg_grad_inner).norm() / y.norm())


def bootstrap_fits(
    measurements: Measurements, Y: torch.Tensor, alpha: float, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) refitted on every bootstrap resample of the groups, (R,) each.

    A resample's means are w @ (group vectors), so every inner product the two-basis least
    squares needs is w^T (X Z^T) w with G x G Gram matrices of the group vectors: no resampled
    P-dimensional vector is ever formed (P is 10^5 for the conv net).
    """
    A, H = measurements.avg_grad, alpha * measurements.avg_grad_inner

    def quad(X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("rg,gh,rh->r", weights, X @ Z.T, weights)

    aa, ai, ii, ay, iy = quad(A, A), quad(A, H), quad(H, H), quad(A, Y), quad(H, Y)
    normal = torch.stack([torch.stack([aa, ai], -1), torch.stack([ai, ii], -1)], -2)
    coef = torch.linalg.solve(normal, torch.stack([ay, iy], -1))
    return coef[:, 0], coef[:, 1]


def analyse(measurements: Measurements, config: TheoryConfig) -> list[dict[str, Any]]:
    """One row per (algorithm, k, alpha): fitted (a, b) with bootstrap standard errors over the
    group means, the paper's (a, b), the fit's relative residual and the paper's."""
    G = measurements.avg_grad.shape[0]
    generator = torch.Generator().manual_seed(config.seed + 1)
    draws = torch.randint(G, (config.bootstrap, G), generator=generator)
    weights = torch.zeros(config.bootstrap, G, dtype=measurements.avg_grad.dtype)
    weights.scatter_add_(1, draws, torch.ones_like(draws, dtype=weights.dtype))
    weights /= G
    A_mean, I_mean = measurements.avg_grad.mean(0), measurements.avg_grad_inner.mean(0)
    rows = []
    for (name, k, alpha), Y in measurements.updates.items():
        y = Y.mean(0)
        a, b, residual = fit(y[None], A_mean[None], I_mean[None], alpha)
        a_boot, b_boot = bootstrap_fits(measurements, Y, alpha, weights)
        paper = paper_coefficients(name, k)
        rows.append(
            {
                "algorithm": name,
                "k": k,
                "alpha": alpha,
                "a": float(a),
                "a_se": float(a_boot.std()),
                "b": float(b),
                "b_se": float(b_boot.std()),
                "a_paper": paper[0],
                "b_paper": paper[1],
                "residual": float(residual),
                "residual_paper": relative_gap(y, A_mean, I_mean, paper, alpha),
            }
        )
    return rows


def loglog_slope(rows: list[dict[str, Any]], key: str = "residual") -> float:
    """Least-squares slope of log(rows[key]) against log(alpha)."""
    x = torch.tensor([r["alpha"] for r in rows], dtype=torch.float64).log()
    y = torch.tensor([r[key] for r in rows], dtype=torch.float64).log()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


def sine_problem(inner_batch: int = 10, seed: int = 0) -> Problem:
    """Sine regression (MLP 1-64-64-1, tanh, mean squared error) at its seeded initialisation;
    a task's m mini-batches are consecutive slices of one shuffle of its 50 points (disjoint
    while m * inner_batch <= 50)."""
    import torch.nn.functional as F

    from reptorch.models import SineMLP
    from reptorch.sine import SineTasks

    torch.manual_seed(seed)
    model = FunctionalModel(SineMLP(activation="tanh").double(), loss_fn=F.mse_loss)
    tasks = SineTasks()

    def sample(num: int, m: int, generator: torch.Generator):
        if m * inner_batch > tasks.num_points:
            raise ConfigError(
                f"{m} disjoint mini-batches of {inner_batch} need {m * inner_batch} points, a sine "
                f"task has {tasks.num_points}: lower --inner-batch or the largest k"
            )
        batch = tasks.sample_train(num, inner_batch=inner_batch, inner_iters=m, generator=generator)
        return batch.xs.double(), batch.ys.double()

    return Problem(model, model.init_params(), sample, "sine")


def omniglot_problem(
    data_dir: str | None = None, ways: int = 5, inner_batch: int = 25, max_k: int = 4, seed: int = 0
) -> Problem:
    """Omniglot (the paper's conv net at its seeded initialisation, float64, summed
    cross-entropy as the reference) on training-split tasks of `ways` classes whose
    `ways * train_shots = max_k * inner_batch` samples are cut into disjoint mini-batches."""
    from reptorch.data.registry import load_splits
    from reptorch.data.tasks import TaskSampler
    from reptorch.losses import loss_for
    from reptorch.models import OmniglotNet

    if (max_k * inner_batch) % ways:
        raise ConfigError(
            f"inner_batch={inner_batch}: {max_k} disjoint mini-batches must hold a whole number "
            f"of samples per class ({ways} ways); choose a multiple of {ways}"
        )
    train_shots = max_k * inner_batch // ways
    sampler = TaskSampler(load_splits("omniglot", data_dir, seed=seed)["train"], ways, "train")
    torch.manual_seed(seed)
    model = FunctionalModel(OmniglotNet(ways).double(), loss_fn=loss_for("sum"))

    def sample(num: int, m: int, generator: torch.Generator):
        tasks = sampler.sample_train(num, train_shots, inner_batch, m, generator=generator)
        return tasks.xs.double(), tasks.ys

    return Problem(model, model.init_params(), sample, "omniglot")
