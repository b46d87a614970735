"""Tree math, the meta-step schedule, the statistics and the paper networks' faithful details."""

import pytest
import torch
from torch import nn

from reptorch import tree
from reptorch.functional import FunctionalModel, use_batch_statistics
from reptorch.models import MiniImageNetNet, OmniglotNet, SineMLP, same_padding
from reptorch.schedule import linear_meta_step
from reptorch.stats import mean_ci95


def test_tree_ops():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor(3.0)}
    b = {"x": torch.tensor([3.0, 6.0]), "y": torch.tensor(-1.0)}
    assert torch.equal(tree.lerp(a, b, 0.25)["x"], torch.tensor([1.5, 3.0]))
    assert torch.equal(tree.mean([a, b])["y"], torch.tensor(1.0))
    assert torch.equal(tree.sub(b, a)["x"], torch.tensor([2.0, 4.0]))
    stacked = tree.stack([a, b])
    assert torch.equal(tree.batch_mean(stacked)["x"], torch.tensor([2.0, 4.0]))
    assert torch.equal(tree.unstack(stacked)[1]["x"], b["x"])
    assert tree.expand(a, 3)["x"].shape == (3, 2)
    assert tree.squared_norm(a).item() == 14.0


def test_linear_meta_step_matches_reference_formula():
    assert linear_meta_step(0, 100, 1.0, 0.0) == 1.0
    assert linear_meta_step(25, 100, 1.0, 0.0) == 0.75
    assert linear_meta_step(50, 100, 0.5, 0.1) == pytest.approx(0.3)


def test_mean_ci95():
    mean, ci = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * 1.2909944 / 2, rel=1e-6)
    assert mean_ci95(torch.tensor([7.0])) == (7.0, 0.0)


@pytest.mark.parametrize(
    "size,kernel,stride,expected",
    [
        (28, 3, 2, (0, 1)),
        (14, 3, 2, (0, 1)),
        (7, 3, 2, (1, 1)),
        (4, 3, 2, (0, 1)),
        (84, 3, 1, (1, 1)),
    ],
)
def test_tensorflow_same_padding(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_network_shapes_and_batchnorm_mode():
    omniglot = OmniglotNet(5)
    assert omniglot(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    assert MiniImageNetNet(5)(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    assert SineMLP()(torch.rand(4, 1)).shape == (4, 1)
    norms = [m for m in omniglot.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 4 and all(m.eps == 1e-3 and not m.track_running_stats for m in norms)
    assert not list(omniglot.buffers())  # running statistics are not part of phi


def test_use_batch_statistics_on_any_module():
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    model = FunctionalModel(use_batch_statistics(module))
    x = torch.randn(6, 3)
    out = model(model.init_params(), x)
    h = module[0](x)
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not dict(module.named_buffers())
