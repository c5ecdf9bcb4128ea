"""No module of ``tether`` imports itself back, however indirectly (the graph and the search: tests/import_graph.py)."""

from __future__ import annotations

from types import ModuleType


def test_the_walk_sees_every_capability(import_graph: ModuleType) -> None:
    names = set(import_graph.modules("tether"))
    for package in ("tether.sim", "tether.teleop", "tether.dataset", "tether.policy_runtime", "tether.calibration"):
        assert package in names, f"{package} not found among {len(names)} modules"
    assert len(names) > 50


def test_the_search_finds_a_cycle_and_none_in_a_tree(import_graph: ModuleType) -> None:
    find_cycle, cycles = import_graph.find_cycle, import_graph.cycles
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}) == [["a", "b", "a"], ["c", "d", "c"]]


def test_no_module_of_tether_imports_itself_back(import_graph: ModuleType) -> None:
    found = import_graph.cycles(import_graph.graph(import_graph.modules("tether")))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)
