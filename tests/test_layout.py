"""The package's layout (STYLE, issue 28): the tree reads as the pipeline, and its imports keep to it.

Stages in tree order: `_model` → `_sites` → `_criteria` → `_methods` → `_reconstruction` → `_results`; beside them
`_sweep`, `_training`, `_io`, `_cli`, `datasets`; `baselines` is the public namespace of the compared methods. Read
from the source with `ast`, not by importing, so a cycle that Python would tolerate is still found."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxlump"
STAGES = ("_model", "_sites", "_criteria", "_methods", "_reconstruction", "_results")
BESIDE = ("_sweep", "_training", "_io", "_cli", "datasets", "baselines")
# Imports inside functions, each for a dependency that is optional or slow to import, never to close a cycle.
LAZY = {
    ("jaxlump._model", "jaxlump._model.flax_nnx"): "flax is imported only when a Flax model is met",
    ("jaxlump._sites.layers", "jaxlump._model.flax_nnx"): "the same",
    ("jaxlump._sweep", "jaxlump._results.plotting"): "matplotlib, only for Sweep.plot",
}


def _module(path: pathlib.Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


MODULES = {_module(p)[0]: p for p in PACKAGE.rglob("*.py")}


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
        return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxlump"):
        return [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("jaxlump")]
    return []


def _imports() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """Module-level imports of every module (with the packages they pass through), and the imports made inside
    functions as `(importer, imported)`."""
    top, inner = {}, set()
    for module, path in MODULES.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text())
        edges = set()
        for node in tree.body:
            for target in _targets(node, module, is_package):
                parts = target.split(".")
                edges |= {
                    ".".join(parts[:i])
                    for i in range(2, len(parts) + 1)
                    if not module.startswith(".".join(parts[:i]) + ".")
                }
        top[module] = {e for e in edges if e in MODULES and e != module}
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                inner |= {(module, t) for t in _targets(node, module, is_package) if t != "jaxlump"}
    return top, inner


TOP, INNER = _imports()


def test_every_module_lives_in_a_stage_or_beside_them():
    homes = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert homes <= set(STAGES) | set(BESIDE) | {"_errors", "_custom_types", "__main__"}, homes


def test_module_level_imports_have_no_cycle():
    state: dict[str, int] = {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        state[module] = 1
        for target in sorted(TOP[module]):
            if state.get(target) == 1:
                pytest.fail(f"import cycle: {' -> '.join((*path, module, target))}")
            if target not in state:
                visit(target, (*path, module))
        state[module] = 2

    for module in sorted(TOP):
        if module not in state:
            visit(module, ())


def test_no_import_inside_a_function_closes_a_cycle_or_hides_one():
    assert {pair for pair in INNER if pair not in LAZY} == set()


def test_the_core_never_imports_the_baselines():
    core = [m for m in TOP if not m.startswith("jaxlump.baselines") and m != "jaxlump"]
    assert {(m, t) for m in core for t in TOP[m] if t.startswith("jaxlump.baselines")} == set()


def test_only_the_wiring_imports_a_method():
    """The stages before and after the methods never call one; they may read the registry, which imports none."""
    wiring = ("jaxlump._methods", "jaxlump.baselines", "jaxlump._sweep", "jaxlump._training", "jaxlump._cli")
    outside = [m for m in TOP if m != "jaxlump" and not m.startswith(wiring)]
    found = {(m, t) for m in outside for t in TOP[m] if t.startswith("jaxlump._methods.")}
    assert found <= {("jaxlump._sites.compress", "jaxlump._methods.registry")}, found
    assert not {t for t in TOP["jaxlump._methods.registry"] if t.startswith("jaxlump._")}
