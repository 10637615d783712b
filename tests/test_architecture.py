"""The package's shape: no import cycles between CRLF's modules, and light modules stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph() -> dict[str, set[str]]:
    """crlf module -> the crlf modules it imports, at module level or inside functions (lazy imports
    still make a cycle: whichever module is imported first sees the other half-initialised)."""
    modules = {}
    for path in SRC.glob("crlf/**/*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crlf"):
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle reachable in ``graph`` as a path that returns to its start (depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_crlf_modules():
    graph = import_graph()
    assert {"crlf.training.loop", "crlf.plots", "crlf.reports.report", "crlf.methods.simclr"} <= set(graph)
    assert cycles(graph) == []


def test_help_does_not_import_torch_and_a_config_imports_only_the_files_of_its_method():
    """``crlf --help`` stays fast: no torch import. Reading a config parses its ``method:`` section with the
    settings class in the method's own file, so it imports that file (and torch), the default method's (SimCLR,
    the reference recipe) and what every method shares, but no other method's."""
    code = "import sys; from crlf.cli import build_parser; build_parser().format_help(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = ("import sys; from crlf.config import load_config; load_config(None, {'method': {'name': 'byol'}}); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('crlf.methods.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["crlf.methods.base", "crlf.methods.byol", "crlf.methods.settings",
                                  "crlf.methods.simclr"]


def test_every_command_the_parser_knows_has_one_handler_in_the_table():
    import argparse

    from crlf.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
