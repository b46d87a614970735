"""The imports run one way: no circles, and the algorithm layer never imports the run layer."""

from tools.import_graph import circles, imports, layer_breaches, main, modules


def test_no_circles_and_the_layers_hold(capsys) -> None:
    graph = imports(modules())
    assert "reptorch.run.training" in graph and "reptorch.algorithms.base" in graph
    assert circles(graph) == [] and layer_breaches(graph) == []
    assert main([]) == 0
    assert "no circles" in capsys.readouterr().out


def test_a_circle_is_found() -> None:
    graph = {"a": {"b": False}, "b": {"c": False}, "c": {"a": False}, "d": {"a": True}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b": True}, "b": {"a": False}}) == []  # a deferred import breaks it
