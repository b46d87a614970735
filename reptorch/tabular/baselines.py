"""The classical baselines a practitioner would fit on each episode's support set.

k-NN, nearest centroid and gradient boosting are scikit-learn's. Logistic regression is
scikit-learn's objective (multinomial, L2 on the weights only, `C` its inverse strength),
  min_{W,b}  sum_i CE(W x_i + b, y_i) + ||W||^2 / (2C),
solved for all episodes at once with L-BFGS in float64: the episodes' problems are independent and
convex, so the joint minimiser is each episode's own (tests/test_tabular.py checks it against
`sklearn.linear_model.LogisticRegression`).

Each takes one hyperparameter setting from a small grid (chosen on validation episodes by
`reptorch.tabular.experiment`) and returns the query accuracy of every episode. They need no
meta-training. scikit-learn is the optional `tabular` extra: `pip install 'reptorch[tabular]'`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from reptorch.errors import ConfigError
from reptorch.tabular.episodes import Episodes

# name -> the hyperparameter grid searched on validation episodes
GRIDS: dict[str, list[dict]] = {
    "logistic regression": [{"C": c} for c in (0.1, 1.0, 10.0)],
    "k-NN": [{"k": k} for k in (1, 3, 5)],
    "nearest centroid": [{}],
    "gradient boosting": [{"max_depth": d} for d in (1, 3)],
}


def _sklearn():
    try:
        from sklearn import ensemble, linear_model, neighbors
    except ImportError:
        raise ConfigError(
            "the tabular study needs scikit-learn: pip install 'reptorch[tabular]'"
        ) from None
    return ensemble, linear_model, neighbors


def make_classifier(name: str, hp: dict, n_support: int) -> Callable:
    """A fresh scikit-learn estimator for one episode."""
    ensemble, linear_model, neighbors = _sklearn()
    if name == "logistic regression":
        return linear_model.LogisticRegression(C=hp["C"], max_iter=1000)
    if name == "k-NN":
        return neighbors.KNeighborsClassifier(n_neighbors=min(hp["k"], n_support))
    if name == "nearest centroid":
        return neighbors.NearestCentroid()
    if name == "gradient boosting":
        return ensemble.GradientBoostingClassifier(
            n_estimators=50, max_depth=hp["max_depth"], learning_rate=0.1, random_state=0
        )
    raise ConfigError(f"unknown baseline {name!r}: choose one of {', '.join(GRIDS)}")


def logistic_regression_accuracy(
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    n_way: int,
    C: float,
) -> torch.Tensor:
    """Query accuracy (E,) of L2 multinomial logistic regression fitted on each support set."""
    weights, bias = fit_logistic_regression(support_x, support_y, n_way, C)
    logits = torch.baddbmm(bias.unsqueeze(1), query_x.double(), weights.transpose(1, 2))
    return (logits.argmax(-1) == query_y).float().mean(1)


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, n_way: int, C: float, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """W (E, N, d), b (E, N) minimising each episode's penalised cross-entropy (see above)."""
    x = x.double()
    e, _, d = x.shape
    weights = torch.zeros(e, n_way, d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(e, n_way, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.baddbmm(bias.unsqueeze(1), x, weights.transpose(1, 2))
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        loss = ce + weights.pow(2).sum() / (2 * C)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weights.detach(), bias.detach()


def fit_predict_accuracy(
    name: str,
    hp: dict,
    support_x: np.ndarray,
    support_y: np.ndarray,
    query_x: np.ndarray,
    query_y: np.ndarray,
) -> float:
    """Fit on one support set, score on its query set."""
    model = make_classifier(name, hp, len(support_y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny support sets
        model.fit(support_x, support_y)
        return float((model.predict(query_x) == query_y).mean())


def baseline_accuracy(
    name: str,
    hp: dict,
    episodes: Episodes,
    support_x: torch.Tensor | None = None,
    query_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """Query accuracy (E,) of `name` with `hp` on every episode; `support_x`/`query_x` replace
    the episodes' inputs (e.g. a pre-trained network's features)."""
    sx = episodes.support_x if support_x is None else support_x
    qx = episodes.query_x if query_x is None else query_x
    if name == "logistic regression":
        return logistic_regression_accuracy(
            sx, episodes.support_y, qx, episodes.query_y, episodes.n_way, hp["C"]
        )
    sx, qx = sx.numpy(), qx.numpy()
    sy, qy = episodes.support_y.numpy(), episodes.query_y.numpy()
    return torch.tensor(
        [fit_predict_accuracy(name, hp, sx[i], sy[i], qx[i], qy[i]) for i in range(len(sy))]
    )
