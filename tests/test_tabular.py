"""The tabular study's parts: reading and encoding (statistics never see query rows), episode
sampling (labels re-shuffled, class and table splits disjoint), the batched oracle and logistic
regression against independent references (vmap autograd, scikit-learn), the bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reptorch.functional import FunctionalModel
from reptorch.tabular.baselines import fit_logistic_regression
from reptorch.tabular.data import Encoder, load_keel, read_table
from reptorch.tabular.episodes import (
    SOURCE_GROUPS,
    ClassSplitProblem,
    SyntheticProblem,
    TableTransferProblem,
    sample_classes_and_rows,
    split_classes,
    standardise_by,
)
from reptorch.tabular.neural import batched_loss_and_grad, mlp
from reptorch.tabular.report import bootstrap


@pytest.fixture(scope="module")
def keel_tables(shared_data: Path):
    return load_keel(shared_data, verify=True)


def test_reading_types_labels_and_manifest(keel_tables) -> None:
    assert len(keel_tables) == 43
    crx = keel_tables["crx"]
    kinds = [c.numeric for c in crx.columns]
    assert kinds[0] is False and kinds[1] is True  # 'b'/'a' categorical, 30.83 numeric
    assert crx.class_names == ("negative", "positive")
    letter = keel_tables["letter"]
    assert letter.class_names[0] == "A" and letter.num_classes == 26
    assert sum(len(r) for r in letter.class_rows()) == letter.rows == 20000


def test_bad_csv_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("x0,x1,class\n1,2,a\n3,b\n")
    with pytest.raises(Exception, match=r"t.csv, line 3: 2 values, the header has 3"):
        read_table(path)


def test_encoder_uses_only_the_rows_it_is_fitted_on(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("x0,x1,class\n1,r,a\n3,g,a\n5,r,b\n1000,blue,b\n")
    table = read_table(path)
    fitted = np.array([0, 1, 2])
    encoder = Encoder(table, fitted)
    x = encoder.transform(np.arange(4))
    values = np.array([1.0, 3.0, 5.0])  # numpy reference on the fitted rows only
    expected = (np.array([1.0, 3.0, 5.0, 1000.0]) - values.mean()) / values.std()
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-6)
    # one-hot over the fitted vocabulary (g, r): 'blue', seen only in row 3, encodes as zeros
    assert x[:, 1:].tolist() == [[0, 1], [1, 0], [0, 1], [0, 0]]
    # changing a row outside the fitted set changes nothing in the statistics
    path.write_text("x0,x1,class\n1,r,a\n3,g,a\n5,r,b\n-7,r,b\n")
    assert Encoder(read_table(path), fitted).stats == encoder.stats


def test_family_a_standardises_with_meta_train_classes_only(keel_tables) -> None:
    problem = ClassSplitProblem(keel_tables["penbased"])
    table = problem.table
    train = np.isin(table.labels, problem.classes["train"])
    raw = np.stack([c.values for c in table.columns], axis=1)
    mean, std = raw[train].mean(0), raw[train].std(0)  # numpy reference
    np.testing.assert_allclose(problem.features.numpy(), (raw - mean) / std, atol=1e-5)
    held_out = problem.features[torch.from_numpy(~train)]
    assert held_out.mean(0).abs().max() > 0.05  # held-out rows did not shape the statistics


def test_class_split_is_disjoint_and_covers_every_class() -> None:
    for classes in (6, 7, 10, 11, 26):
        train, val, test, n_way = split_classes(classes, seed=0)
        assert n_way == min(5, classes // 3) and len(val) == len(test) == n_way
        assert sorted(train + val + test) == list(range(classes))


def test_episodes_reshuffle_labels_and_keep_support_and_query_apart() -> None:
    rows = [torch.arange(c * 100, c * 100 + 40) for c in range(8)]  # row r belongs to class r//100
    gen = torch.Generator().manual_seed(0)
    mappings = set()
    for _ in range(30):
        idx, labels = sample_classes_and_rows(rows, 5, 12, gen)
        classes = idx // 100
        assert (classes == classes[:, :1]).all()  # one class per label
        assert len(set(classes[:, 0].tolist())) == 5
        assert len(set(idx.flatten().tolist())) == 60  # support and query rows distinct
        assert labels.tolist() == [[i] * 12 for i in range(5)]
        mappings.add(tuple(classes[:, 0].tolist()))
    assert len(mappings) > 20  # which class gets label 0 changes from episode to episode


def test_family_a_episodes_use_their_split_classes(keel_tables) -> None:
    problem = ClassSplitProblem(keel_tables["letter"])
    gen = torch.Generator().manual_seed(1)
    eps = problem.episodes("test", 3, 5, 15, gen)
    assert eps.support_x.shape == (3, 25, 16) and eps.query_x.shape == (3, 75, 16)
    assert (torch.bincount(eps.support_y[0]) == 5).all()
    assert (torch.bincount(eps.query_y[0]) == 15).all()
    test_rows = torch.cat(problem.class_rows["test"])
    other = torch.cat(problem.class_rows["train"] + problem.class_rows["val"])
    assert not set(test_rows.tolist()) & set(other.tolist())
    x, y = problem.pretrain_batch(64, gen)
    assert y.max() < problem.n_pretrain_classes and y.min() >= 0


def test_family_c_standardises_with_the_support_set_only(keel_tables) -> None:
    problem = TableTransferProblem(keel_tables)
    eps = problem.episodes("test", 4, 5, 15, torch.Generator().manual_seed(2))
    sx = eps.support_x
    assert sx.shape == (4, 10, 8)
    live = sx.std(1, unbiased=False) > 1e-6
    assert torch.allclose(sx.mean(1)[live], torch.zeros(()), atol=1e-5)
    assert torch.allclose(sx.std(1, unbiased=False)[live], torch.ones(()), atol=1e-4)
    support, query = torch.randn(6, 3), torch.randn(9, 3)
    s1, q1 = standardise_by(support, query)
    s2, q2 = standardise_by(support, query * 100 + 5)  # query rows never enter the statistics
    assert torch.equal(s1, s2) and torch.allclose(q2, standardise_by(support, query * 100 + 5)[1])
    mean, std = support.mean(0), support.std(0, unbiased=False)
    assert torch.allclose(q1, (query - mean) / std)


def test_family_c_keeps_source_groups_on_one_side(keel_tables) -> None:
    problem = TableTransferProblem(keel_tables)
    side = {n: s for s, names in problem.splits.items() for n in names}
    assert sorted(side) == sorted(keel_tables)
    for group in SOURCE_GROUPS:
        assert len({side[n] for n in group}) == 1, group


def test_synthetic_controls_label_by_argmax_and_share_u_only_when_positive() -> None:
    pos, neg = SyntheticProblem(True, pool=5), SyntheticProblem(False, pool=5)
    assert all(torch.equal(t[0], pos._pool[0][0]) for t in pos._pool)
    assert not torch.equal(neg._pool[0][0], neg._pool[1][0])
    u, w, x, class_rows = pos._pool[0]
    y = (torch.relu(x @ u.T) @ w.T).argmax(-1)
    for c, rows in enumerate(class_rows):
        assert (y[rows] == c).all() and len(rows) >= 0.02 * len(x)
    eps = pos.episodes("val", 2, 5, 15, torch.Generator().manual_seed(0))
    assert eps.support_x.shape == (2, 25, 16)


def test_batched_oracle_matches_vmap_autograd() -> None:
    model = FunctionalModel(mlp(7, 3, 16, seed=0))
    gen = torch.Generator().manual_seed(0)
    params = {
        k: v + 0.1 * torch.randn(4, *v.shape, generator=gen) for k, v in model.init_params().items()
    }
    x, y = torch.randn(4, 9, 7, generator=gen), torch.randint(3, (4, 9), generator=gen)
    loss, grads = batched_loss_and_grad(params, x, y)
    ref_loss, ref_grads = model.vmap_loss_and_grad()(params, x, y)
    torch.testing.assert_close(loss, ref_loss)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name])


def test_batched_logistic_regression_matches_scikit_learn() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 15, 4, generator=gen), torch.arange(3).repeat(5).expand(3, 15)
    weights, bias = fit_logistic_regression(x, y, 3, C=1.0)
    for i in range(3):
        ref = sklearn.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000)
        ref.fit(x[i].double().numpy(), y[i].numpy())
        # scikit-learn's multinomial coefficients are defined up to a shift shared by classes
        np.testing.assert_allclose(weights[i].numpy(), ref.coef_, atol=2e-4)
        np.testing.assert_allclose(
            bias[i].numpy() - bias[i].numpy().mean(),
            ref.intercept_ - ref.intercept_.mean(),
            atol=2e-4,
        )


def test_bootstrap_interval() -> None:
    constant = [np.full((3, 50), 0.25), np.full((3, 20), 0.75)]
    assert bootstrap(constant) == (0.5, 0.5, 0.5)  # mean over tables, no spread
    rng = np.random.default_rng(0)
    noisy = [rng.normal(0.1, 1.0, size=(3, 400))]
    mean, low, high = bootstrap(noisy)
    half = 1.96 * noisy[0].mean(0).std() / np.sqrt(400)  # normal approximation, same data
    assert low < mean < high and abs((high - low) / 2 - half) < 0.3 * half
