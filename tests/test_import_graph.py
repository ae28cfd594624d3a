"""Imports point down only (DESIGN.md, layers): no cycle between pollama's subpackages, counting
every import, at module level or inside a function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pollama

ROOT = Path(pollama.__file__).parent


def unit(module: str) -> str | None:
    """pollama.a.b -> a (a subpackage, or a top-level module such as errors)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pollama" else None


def import_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> unit it imports -> the modules that do."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in ROOT.rglob("*.py"):
        module = ".".join(("pollama", *path.relative_to(ROOT).with_suffix("").parts))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        module = module.removesuffix(".__init__")
        src = unit(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                targets = [".".join([*base, *([node.module] if node.module else [])])]
            else:
                continue
            for target in targets:
                dst = unit(target)
                if src and dst and dst != src:
                    graph[src][dst].add(module)
    return graph


def cycles(graph) -> list[list[str]]:
    """Each elementary cycle once, as the units along it."""
    found, seen = [], set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start and frozenset(path) not in seen:
                seen.add(frozenset(path))
                found.append(path)
            elif nxt not in path and nxt > start:
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_no_import_cycle_between_pollamas_packages():
    graph = import_graph()
    assert {"models", "create", "nn", "server"} <= set(graph)  # the walk sees the tree
    report = []
    for ring in cycles(graph):
        edges = zip(ring, [*ring[1:], ring[0]])
        report.append(" -> ".join(f"{a} ({', '.join(sorted(graph[a][b]))})" for a, b in edges))
    assert not report, "\n".join(report)


def test_the_graph_finds_a_cycle():
    assert cycles({"a": {"b": {"pollama.a"}}, "b": {"a": {"pollama.b"}}}) == [["a", "b"]]
