"""`reptorch theory` on quadratic task losses, where every quantity has a closed form.

Linear regression L_B(w) = (1/n) ||X_B w - y_B||^2 is quadratic in w: g_B(w) = H_B w - c_B with
H_B = (2/n) X_B^T X_B, c_B = (2/n) X_B^T y_B. The task distribution is finite (two tasks, each
with a fixed partition into three mini-batches, every order of them equally likely), so the
"Monte Carlo" mean over the enumerated samples is the exact expectation, and NumPy computes the
same expectations from the matrices alone: the SGD iterates, the Reptile, FOMAML and MAML
gradients, AvgGrad and AvgGradInner.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reptorch.errors import ConfigError
from reptorch.experiments.theory import (
    Problem,
    TheoryConfig,
    analyse,
    basis_terms,
    flatten,
    loglog_slope,
    measure,
    paper_coefficients,
    sine_problem,
)
from reptorch.functional import FunctionalModel

DIM, BATCH, M = 3, 2, 3


def _data():
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(2, M, BATCH, DIM))  # two tasks, three mini-batches of two points
    ys = rng.normal(size=(2, M, BATCH, 1)) + np.array([2.0, -1.0]).reshape(2, 1, 1, 1)
    phi = rng.normal(size=DIM)
    return xs, ys, phi


def _problem(rotate_safe: bool = True) -> tuple[Problem, int]:
    xs, ys, phi = _data()
    orders = list(itertools.permutations(range(M)))
    sx = np.stack([xs[t][list(o)] for t in range(2) for o in orders])
    sy = np.stack([ys[t][list(o)] for t in range(2) for o in orders])
    module = nn.Linear(DIM, 1, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor(phi).view(1, DIM))
    model = FunctionalModel(module, loss_fn=F.mse_loss)

    def sample(num: int, m: int, generator: torch.Generator):
        assert num == len(sx) and m == M
        return torch.tensor(sx), torch.tensor(sy)

    return Problem(model, model.init_params(), sample, "quadratic"), len(sx)


def _exact(alpha: float) -> dict:
    """NumPy: AvgGrad, AvgGradInner and E[g] per (algorithm, k) at step alpha, by enumeration."""
    xs, ys, phi = _data()
    H = 2.0 / BATCH * np.einsum("tbni,tbnj->tbij", xs, xs)
    c = 2.0 / BATCH * np.einsum("tbni,tbn->tbi", xs, ys[..., 0])
    eye = np.eye(DIM)
    avg_grad = np.mean([H[t, i] @ phi - c[t, i] for t in range(2) for i in range(M)], 0)
    pairs = [(t, i, j) for t in range(2) for i in range(M) for j in range(M) if i != j]
    inner = np.mean([H[t, i] @ (H[t, j] @ phi - c[t, j]) for t, i, j in pairs], 0)
    updates = {}
    for k in (2, 3):
        values = {"reptile": [], "fomaml": [], "maml": []}
        for t in range(2):
            for order in itertools.permutations(range(M)):
                w, jac = phi.copy(), eye.copy()
                for step in order[: k - 1]:
                    w = w - alpha * (H[t, step] @ w - c[t, step])
                    jac = (eye - alpha * H[t, step]) @ jac
                last = H[t, order[k - 1]] @ w - c[t, order[k - 1]]
                values["fomaml"].append(last)
                values["maml"].append(jac.T @ last)
                values["reptile"].append((phi - (w - alpha * last)) / alpha)
        for name, v in values.items():
            updates[(name, k)] = np.mean(v, 0)
    return {"avg_grad": avg_grad, "avg_grad_inner": inner, "updates": updates}


@pytest.mark.parametrize("rotate", [False, True])
def test_quadratic_estimates_equal_closed_form(rotate):
    problem, size = _problem()
    alphas = (1e-6, 1e-3, 0.05)
    config = TheoryConfig(
        ks=(2, 3), alphas=alphas, tasks=2 * size, group=size, bootstrap=4, rotate=rotate
    )
    measured = measure(problem, config)
    for alpha in alphas:
        exact = _exact(alpha)
        for g in range(2):
            np.testing.assert_allclose(measured.avg_grad[g], exact["avg_grad"], rtol=1e-12)
            np.testing.assert_allclose(
                measured.avg_grad_inner[g], exact["avg_grad_inner"], rtol=1e-12
            )
        for (name, k), value in exact["updates"].items():
            got = measured.updates[(name, k, alpha)].mean(0).numpy()
            # Reptile's gradient is (phi - W) / alpha: a difference of parameters, ~1e-16 / alpha
            np.testing.assert_allclose(got, value, rtol=1e-12, atol=1e-15 / alpha)


def test_quadratic_fit_recovers_paper_coefficients_and_second_order_residual():
    """Exact expectations: (a, b) -> the paper's as alpha -> 0, the residual falls as alpha^2."""
    problem, size = _problem()
    alphas = (1e-4, 1e-3, 1e-2)
    config = TheoryConfig(ks=(2, 3), alphas=alphas, tasks=2 * size, group=size, bootstrap=4)
    rows = analyse(measure(problem, config), config)
    assert len(rows) == 3 * 2 * len(alphas)
    for row in rows:
        a_paper, b_paper = paper_coefficients(row["algorithm"], row["k"])
        assert (row["a_paper"], row["b_paper"]) == (a_paper, b_paper)
        if row["alpha"] == 1e-4:
            assert row["a"] == pytest.approx(a_paper, abs=1e-3)
            assert row["b"] == pytest.approx(b_paper, abs=5e-2)
            assert row["a_se"] < 1e-9  # two identical groups: no sampling noise
    for name in ("reptile", "fomaml", "maml"):
        for k in (2, 3):
            series = [r for r in rows if r["algorithm"] == name and r["k"] == k]
            if k == 2 and name != "maml":  # g_1 + g_2(phi - alpha g_1): exactly linear in alpha
                assert max(r["residual_paper"] for r in series) < 1e-11
            else:
                assert loglog_slope(series, "residual_paper") == pytest.approx(2.0, abs=0.01)


def test_basis_terms_hessian_vector_products_match_finite_differences():
    problem = sine_problem()
    xs, ys = problem.sample(3, 3, torch.Generator().manual_seed(1))
    _, inner = basis_terms(problem.model, problem.phi, xs, ys)
    # finite-difference H_i v for the same estimator
    loss, phi = problem.model.loss, problem.phi

    def grad_at(params, x, y):
        return flatten(torch.func.grad(loss)(params, x, y))

    total = torch.zeros_like(inner)
    h = 1e-6
    for t in range(3):
        grads = [grad_at(phi, xs[t, i], ys[t, i]) for i in range(3)]
        for i in range(3):
            v = sum(grads[j] for j in range(3) if j != i)
            offset = 0
            shifted_plus, shifted_minus = {}, {}
            for name, value in phi.items():
                n = value.numel()
                step = v[offset : offset + n].view_as(value)
                shifted_plus[name], shifted_minus[name] = value + h * step, value - h * step
                offset += n
            diff = grad_at(shifted_plus, xs[t, i], ys[t, i]) - grad_at(
                shifted_minus, xs[t, i], ys[t, i]
            )
            total += diff / (2 * h)
    expected = total / (3 * 3 * 2)
    torch.testing.assert_close(inner, expected, rtol=1e-6, atol=1e-6)


def test_sine_problem_batches_are_disjoint():
    problem = sine_problem(inner_batch=10)
    xs, _ = problem.sample(5, 4, torch.Generator().manual_seed(0))
    for task in xs:
        points = task.reshape(-1)
        assert points.unique().numel() == points.numel() == 40


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="ks="):
        TheoryConfig(ks=(1, 2))
    with pytest.raises(ConfigError, match="alphas="):
        TheoryConfig(alphas=(0.0,))
    with pytest.raises(ConfigError, match="tasks=10, group=100"):
        TheoryConfig(tasks=10)
    with pytest.raises(ConfigError, match="algorithm='joint'"):
        TheoryConfig(algorithms=("joint",))
    with pytest.raises(ConfigError, match="disjoint mini-batches of 20"):
        sine_problem(inner_batch=20).sample(1, 3, torch.Generator())


def test_omniglot_problem_batches_are_disjoint_and_summed(omniglot_dir):
    from reptorch.experiments.theory import omniglot_problem
    from reptorch.losses import cross_entropy_sum

    problem = omniglot_problem(str(omniglot_dir.parent), inner_batch=10, max_k=3)
    assert problem.model.loss_fn is cross_entropy_sum
    xs, ys = problem.sample(2, 3, torch.Generator().manual_seed(0))
    assert xs.shape == (2, 3, 10, 1, 28, 28) and xs.dtype == torch.float64
    for task, labels in zip(xs, ys, strict=True):
        images = task.reshape(30, -1)
        assert torch.unique(images, dim=0).shape[0] == 30  # 30 distinct images
        assert torch.bincount(labels.reshape(-1)).tolist() == [6] * 5
    with pytest.raises(ConfigError, match="multiple of 5"):
        omniglot_problem(str(omniglot_dir.parent), inner_batch=7, max_k=3)


def test_theory_command_prints_table_and_writes_figure_and_json(tmp_path, capsys):
    from reptorch.cli import main

    out, rows = tmp_path / "theory.png", tmp_path / "rows.json"
    args = ["theory", "--tasks", "8", "--group", "4", "--ks", "2", "--alphas", "1e-4,1e-3"]
    assert main([*args, "--bootstrap", "5", "--out", str(out), "--json-out", str(rows)]) == 0
    printed = capsys.readouterr().out
    assert "reptile     2      2.0" in printed and "maml        2      1.0" in printed
    assert out.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(rows.read_text())
    assert saved["config"]["tasks"] == 8 and len(saved["rows"]) == 3 * 2
    assert main(["theory", "--alphas", "1e-4,x"]) == 1
    assert "--alphas '1e-4,x'" in capsys.readouterr().err


def test_bootstrap_fits_equal_least_squares_on_resampled_means():
    from reptorch.experiments.theory import Measurements, bootstrap_fits, fit

    rng = torch.Generator().manual_seed(3)
    G, P, alpha = 5, 40, 0.01
    A, H = (
        torch.randn(G, P, generator=rng, dtype=torch.float64),
        torch.randn(G, P, generator=rng, dtype=torch.float64),
    )
    Y = 2 * A - 3 * alpha * H + 0.1 * torch.randn(G, P, generator=rng, dtype=torch.float64)
    weights = torch.rand(7, G, generator=rng, dtype=torch.float64)
    weights /= weights.sum(1, keepdim=True)
    a, b = bootstrap_fits(Measurements(A, H, {}), Y, alpha, weights)
    a_ref, b_ref, _ = fit(weights @ Y, weights @ A, weights @ H, alpha)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(b, b_ref)
