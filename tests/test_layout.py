"""The house rules of docs/layout.md, read from the source: the layer order of the imports, one
definition of each shared idea, and the size limits.

These tests read the code (``ast``), they do not import it, so a violation is reported with the
file and line that commits it.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "scoresde"

#: The layer of every top-level component of the package, lowest first (docs/layout.md). A module
#: imports only from its own layer or below. The deprecated shims sit with the code they forward to.
LAYERS = {
    "_utils": 1, "io": 1, "quantize": 1, "_deprecated": 1,
    "sde": 2, "schedules": 2, "scorefn": 2, "discrete": 2, "solvers": 2, "nets": 2,
    "targets": 3, "score": 3, "guidance": 3, "interop": 3, "losses": 3, "metrics": 3, "data": 3,
    "sampling": 4, "likelihood": 4, "evaluate": 4,
    "training": 5, "train": 5,
    "cli": 6,
    "scoresde": 6,  # the root package: importing it (a re-exported name) loads every layer
}
#: Components that must not import one another although the layers would allow it.
FORBIDDEN = {
    "solvers": {"sde", "schedules", "scorefn", "discrete", "nets"},  # solvers know no SDE
    "nets": {"sde", "schedules", "scorefn", "discrete", "solvers"},  # networks are plain modules
    "data": {"sde", "schedules", "scorefn", "discrete", "solvers", "nets", "score", "losses", "metrics"},
}

MAX_MODULE_LINES = 470  # "about 450"
MAX_FUNCTION_LINES = 90


def modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def dotted(path: Path, root: Path = PKG) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def component(name: str):
    """``scoresde.sampling.grids`` -> ``sampling``; ``None`` for foreign modules; ``"scoresde"`` for the
    package root (``from scoresde import x`` with ``x`` a re-exported name, not a module)."""
    parts = name.split(".")
    if parts[0] != "scoresde":
        return None
    if len(parts) == 1 or not ((PKG / parts[1]).is_dir() or (PKG / f"{parts[1]}.py").is_file()):
        return "scoresde"
    return parts[1]


def imports(path: Path, root: Path = PKG):
    """``(line, absolute module name)`` of every import in ``path``, including those inside functions."""
    mod = dotted(path, root)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            if node.module is None or name == "scoresde":  # from . import x, y: each x is a module
                out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, name))
    return out


def test_every_component_has_a_layer():
    found = {component(dotted(p)) for p in modules()} - {"scoresde"}
    assert found <= set(LAYERS), f"give {sorted(found - set(LAYERS))} a layer here and in docs/layout.md"


def test_no_module_imports_a_layer_above_it():
    bad = []
    for p in modules():
        me = component(dotted(p))
        if me == "scoresde":  # scoresde/__init__.py: the public API re-exports every layer
            continue
        for line, name in imports(p):
            other = component(name)
            if other is None or other == me:
                continue
            if LAYERS[other] > LAYERS[me] or other in FORBIDDEN.get(me, ()):
                bad.append(f"{p.relative_to(PKG.parent)}:{line} ({me}, layer {LAYERS[me]}) imports {name} "
                           f"({other}, layer {LAYERS[other]})")
    assert not bad, "imports against the layer order of docs/layout.md:\n" + "\n".join(bad)


def test_the_data_package_reaches_no_solver_sampler_or_likelihood():
    """Follow the imports of scoresde/data/ transitively (static, inside the package): none of
    them is a solver, sampler, likelihood, training or command-line module."""
    by_name = {dotted(p): p for p in modules()}
    seen, todo = set(), [n for n in by_name if n.startswith("scoresde.data")]
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        todo += [n for _, n in imports(by_name[name]) if n.startswith("scoresde.") and n != "scoresde"]
    reached = {component(n) for n in seen}
    assert not reached & {"solvers", "sampling", "likelihood", "evaluate", "training", "train", "cli"}, sorted(seen)


def definitions(kind, name):
    """Where ``name`` is defined (a class, a function or a module-level assignment) in the package."""
    where = []
    for p in modules():
        tree = ast.parse(p.read_text())
        for node in tree.body if kind == "assign" else ast.walk(tree):
            if kind == "class" and isinstance(node, ast.ClassDef) and node.name == name:
                where.append(dotted(p))
            elif kind == "def" and isinstance(node, ast.FunctionDef) and node.name == name:
                where.append(dotted(p))
            elif kind == "assign" and isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets) and not (
                        isinstance(node.value, ast.Name)):  # an alias (scale = grid_values) is no definition
                    where.append(dotted(p))
    return where


@pytest.mark.parametrize("kind,name,home", [
    ("class", "CheckedScore", "scoresde.scorefn"),
    ("assign", "ScoreFn", "scoresde.scorefn"),
    ("def", "grid_values", "scoresde.quantize"),
    ("def", "to_levels", "scoresde.quantize"),
    ("def", "check_on_grid", "scoresde.quantize"),
    ("def", "dequantize", "scoresde.quantize"),
    ("assign", "GRID_TOL", "scoresde.quantize"),
    ("def", "draw_times", "scoresde.losses"),
    ("def", "check_int", "scoresde._utils"),
])
def test_each_shared_idea_is_defined_once(kind, name, home):
    assert definitions(kind, name) == [home]


def test_the_training_loop_draws_its_times_through_losses():
    loop = (PKG / "training" / "loop.py").read_text()
    assert "draw_times(" in loop and "torch.rand(" not in loop and "importance_density" not in loop


def test_the_positive_int_check_is_written_once():
    pattern = re.compile(r"isinstance\((\w+), bool\).{0,20}isinstance\(\1, int\)")
    where = [f"{p.relative_to(PKG.parent)}:{i}" for p in modules()
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    others = [w for w in where if not w.startswith("scoresde/_utils.py:")]
    assert len(where) - len(others) == 1 and not others, f"use scoresde._utils.check_int instead of: {others}"


def test_no_module_is_too_long():
    long = {str(p.relative_to(PKG.parent)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules by concept (limit {MAX_MODULE_LINES} lines): {long}"


def code_lines(fn: ast.AST) -> int:
    """Lines of a function without its docstring."""
    n = fn.end_lineno - fn.lineno + 1
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        n -= body[0].end_lineno - body[0].lineno + 1
    return n


def test_no_function_is_too_long():
    """A numerical kernel that must stay whole may say so in its docstring ("kept whole: ...")."""
    long = []
    for p in modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(node) > MAX_FUNCTION_LINES:
                if "kept whole:" not in (ast.get_docstring(node) or ""):
                    long.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {node.name} ({code_lines(node)} lines)")
    assert not long, f"split these functions (limit {MAX_FUNCTION_LINES} lines of code): {long}"


def test_the_checker_catches_what_it_should(tmp_path):
    """The import reader resolves relative imports, and the layer check fails on an upward import."""
    fake = PKG / "sde.py"
    names = [n for _, n in imports(fake)]
    assert "scoresde._utils" in names and "scoresde.scorefn" in names
    bad = tmp_path / "scoresde" / "nets" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..sampling import sample\n")
    root = tmp_path / "scoresde"
    assert imports(bad, root) == [(1, "scoresde.sampling")]
    assert LAYERS[component(imports(bad, root)[0][1])] > LAYERS[component(dotted(bad, root))]
