"""The study scripts (``studies/*.py``) are what users copy, so they use the public API only, share
code through ``studies/_common.py`` (no study executes another) and stay readable.

Public, for a study: the names in ``scoresde.__all__`` and the non-underscored names of the
documented subpackages (:data:`PUBLIC_MODULES`; a name re-exported there from another package,
e.g. ``torch`` or ``typing.Optional``, does not count). Not public: underscored modules
(``scoresde._utils``, ``scoresde.sampling._common``), modules that are not documented
(``scoresde.io``; the deprecated paths ``scoresde.evaluate`` and ``scoresde.train``), and the
underscored attributes of scoresde objects. The checker is plain ``ast`` on the study's source,
with the names checked against the real modules; it is itself tested on a bad snippet below.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import types
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
STUDY_FILES = sorted(STUDIES.glob("*.py"))
PACKAGE = ROOT / "scoresde"
#: the shared module of the studies: the one module of studies/ a study may import
COMMON = "_common"
#: the modules a study may import from (docs/api.md)
PUBLIC_MODULES = frozenset({"scoresde"} | {f"scoresde.{m}" for m in (
    "sampling", "solvers", "likelihood", "metrics", "targets", "losses", "quantize", "data", "training", "nets",
    "score", "sde")})
#: the longest function body allowed in a study, in lines (its docstring not counted)
MAX_FUNCTION_LINES = 90
#: names whose use would run code outside the import system
FORBIDDEN_MODULES = ("importlib", "runpy")
#: builtins that run code (called by name; ``model.eval()`` is a method, not these)
FORBIDDEN_BUILTINS = ("exec", "eval", "__import__")
#: functions of importlib / runpy that execute a file, under whatever name they were reached
FORBIDDEN_CALLS = ("spec_from_file_location", "exec_module", "run_path", "run_module", "import_module")


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and len(name) > 4


def _is_private(name: str) -> bool:
    return name.startswith("_") and not _is_dunder(name)


# ---------------------------------------------------------------------------------------------
# What is public
# ---------------------------------------------------------------------------------------------
def _imported(value) -> bool:
    """A class or function that a module merely imported: from another package (torch, typing) or
    from an underscored scoresde module (``scoresde._utils``)."""
    module = getattr(value, "__module__", None)
    if not (inspect.isclass(value) or callable(value)) or not isinstance(module, str):
        return False
    parts = module.split(".")
    return parts[0] != "scoresde" or any(q.startswith("_") for q in parts)


@lru_cache(maxsize=None)
def public_names(module: str) -> frozenset:
    """The names a study may take from the public module ``module``: its ``__all__``; for a
    subpackage also its other non-underscored attributes that are neither modules nor imported
    (:func:`_imported`); the public subpackages below it."""
    mod = importlib.import_module(module)
    names = set(getattr(mod, "__all__", ()))
    if module != "scoresde":
        names |= {n for n, v in vars(mod).items()
                  if not n.startswith("_") and not isinstance(v, types.ModuleType) and not _imported(v)}
    names |= {m.rpartition(".")[2] for m in PUBLIC_MODULES if m.rpartition(".")[0] == module}
    return frozenset(names)


def _defined_private_attributes(tree: ast.AST) -> set:
    """Underscored attribute names a source defines on its classes and objects: methods and class
    attributes in class bodies, ``x._name = ...`` assignments, ``setattr(x, "_name", ...)``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.add(stmt.name)
                targets = stmt.targets if isinstance(stmt, ast.Assign) else (
                    [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
                out.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("setattr", "__setattr__") and isinstance(node.args[1].value, str):
                out.add(node.args[1].value)
    return {n for n in out if _is_private(n)}


@lru_cache(maxsize=None)
def scoresde_private_attributes() -> frozenset:
    """Underscored attribute names of scoresde's classes and objects: from the source of every
    module (:func:`_defined_private_attributes`), and from the classes of the loaded scoresde
    modules at run time (which also sees names set in a loop, like the deprecated ``_coeffs``)."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        out |= _defined_private_attributes(ast.parse(path.read_text(), str(path)))
    for module in PUBLIC_MODULES:
        importlib.import_module(module)
    for name, mod in list(sys.modules.items()):
        if name == "scoresde" or name.startswith("scoresde."):
            for value in list(vars(mod).values()):
                if inspect.isclass(value) and value.__module__.startswith("scoresde"):
                    out.update(n for n in vars(value) if _is_private(n))
    return frozenset(out)


# ---------------------------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------------------------
def _check_module(module: str, where: str) -> list:
    if module in PUBLIC_MODULES:
        return []
    why = "underscored" if any(p.startswith("_") for p in module.split(".")) else "not a documented module"
    return [f"{where}: {module} is not public ({why}); use scoresde's top level or one of "
            f"{', '.join(sorted(PUBLIC_MODULES - {'scoresde'}))}"]


def _check_name(module: str, name: str, where: str) -> list:
    if _is_dunder(name) or name in public_names(module):
        return []
    return [f"{where}: {module}.{name} is not a public name of {module}"]


def check_source(source: str, filename: str = "<study>", own_private: frozenset = frozenset(),
                 studies: frozenset = frozenset()) -> list:
    """Problems of one study's source: ``importlib``/``runpy``/``exec`` use, imports of non-public
    scoresde modules or names (also as attribute chains ``scoresde.io.x``), imports of another study
    (``studies``: their module names; only ``_common`` may be imported), and access to an underscored
    attribute of a scoresde object, unless the study's own classes (``own_private``: names the study
    and ``_common.py`` define) have an attribute of that name."""
    tree = ast.parse(source, filename)
    private = scoresde_private_attributes() - own_private - _defined_private_attributes(tree)
    problems, bound = [], {}  # bound: local name -> the scoresde module it is
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_MODULES:
                    problems.append(f"{where}: import {alias.name} (load shared code from _common instead)")
                elif top in studies:
                    problems.append(f"{where}: import {alias.name}: a study imports no other study (use _common)")
                elif top == "scoresde":
                    bad = _check_module(alias.name, where)
                    problems += bad
                    if not bad or not alias.asname:
                        bound[alias.asname or "scoresde"] = alias.name if alias.asname else "scoresde"
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            top = module.split(".")[0]
            if node.level or top in FORBIDDEN_MODULES:
                problems.append(f"{where}: from {'.' * node.level}{module} import ...")
            elif top in studies:
                problems.append(f"{where}: from {module} import ...: a study imports no other study (use _common)")
            elif top == "scoresde":
                bad = _check_module(module, where)
                problems += bad
                for alias in node.names:
                    if not bad:
                        problems += _check_name(module, alias.name, where)
                    if f"{module}.{alias.name}" in PUBLIC_MODULES:
                        bound[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in FORBIDDEN_CALLS or (isinstance(func, ast.Name) and name in FORBIDDEN_BUILTINS):
                problems.append(f"{where}: {name}(...) runs code outside the import system")
            if name in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in private:
                problems.append(f"{where}: {name}(..., {node.args[1].value!r}) uses a private scoresde attribute")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        where = f"{filename}:{node.lineno}"
        module = _resolve(node.value, bound)
        if module is not None:
            sub = f"{module}.{node.attr}"
            if sub not in PUBLIC_MODULES and not _is_dunder(node.attr) and node.attr not in public_names(module):
                problems += _check_module(sub, where) if _is_module(sub) else _check_name(module, node.attr, where)
        elif node.attr in private:
            problems.append(f"{where}: .{node.attr} is a private attribute of a scoresde object; use its public "
                            f"name (e.g. coeffs_unchecked for _coeffs) or ask for one")
        elif node.attr in FORBIDDEN_CALLS:
            problems.append(f"{where}: .{node.attr} runs code outside the import system")
    return sorted(set(problems))


def _is_module(name: str) -> bool:
    return isinstance(sys.modules.get(name), types.ModuleType) or (
        PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py").exists()
        or PACKAGE.joinpath(*name.split(".")[1:], "__init__.py").exists())


def _resolve(node: ast.AST, bound: dict):
    """The public scoresde module an expression names (``scoresde``, ``scoresde.sampling``), else None."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, bound)
        if base is not None and f"{base}.{node.attr}" in PUBLIC_MODULES:
            return f"{base}.{node.attr}"
    return None


def function_lengths(source: str) -> dict:
    """``{name: lines}`` of every function of a source, the docstring not counted."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                n -= first.end_lineno - first.lineno + 1
            out[f"{node.name} (line {node.lineno})"] = n
    return out


def _own_private() -> frozenset:
    return frozenset(_defined_private_attributes(ast.parse((STUDIES / f"{COMMON}.py").read_text())))


def _study_names() -> frozenset:
    return frozenset(p.stem for p in STUDY_FILES if p.stem != COMMON)


# ---------------------------------------------------------------------------------------------
# The studies
# ---------------------------------------------------------------------------------------------
def test_there_are_studies_and_a_common_module():
    assert (STUDIES / f"{COMMON}.py") in STUDY_FILES
    assert len(STUDY_FILES) >= 6


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_study_uses_public_names_only(path):
    problems = check_source(path.read_text(), str(path.relative_to(ROOT)), _own_private(), _study_names())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_study_functions_are_short(path):
    long = {k: n for k, n in function_lengths(path.read_text()).items() if n > MAX_FUNCTION_LINES}
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_study_runs_as_a_script(tmp_path):
    """``python studies/x.py`` from another folder finds ``_common`` (the script's folder is on the
    path) and its scoresde imports: ``--help`` imports everything and exits 0."""
    procs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
             for p in STUDY_FILES if p.stem != COMMON}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-2000:])
        assert "usage:" in out and "--quick" in out, name


# ---------------------------------------------------------------------------------------------
# The checker itself
# ---------------------------------------------------------------------------------------------
BAD = '''
import importlib.util
import runpy
import scoresde.io
import scoresde._utils as U
import baselines
from scoresde.io import atomic_write
from scoresde.sampling._common import something
from scoresde.evaluate import evaluate_bpd
from scoresde.train import TrainConfig
from scoresde import _utils
from scoresde import not_a_name
from scoresde.sde import Optional
from scoresde.targets import torch
from scoresde.sde import as_time
from nll_table import PLANS
import scoresde
import scoresde.sampling as S

spec = importlib.util.spec_from_file_location("bench", "studies/bench_likelihood.py")
runpy.run_path("studies/baselines.py")
exec(open("studies/baselines.py").read())
scoresde.io.atomic_write("x", b"")
scoresde.sampling._common
S._common
m, s = sde._coeffs(t)
sde._time_vector(t)
getattr(sde, "_coeffs")
'''

GOOD = '''
import scoresde
import scoresde.sampling
from scoresde import VPSDE, atomic_write, evaluate_bpd, sampling
from scoresde.likelihood import divergence, draw_probes
from scoresde.sampling import SAMPLERS, sample
from _common import csv_bytes


class Leaky:
    def __init__(self):
        self._kept = []

    def keep(self, x):
        self._kept.append(x)


m, s = VPSDE().coeffs_unchecked(t)
scoresde.sampling.sample
sampling.SAMPLERS
scoresde.__version__
type(m).__name__
'''


def test_checker_flags_each_private_use_in_a_bad_snippet():
    problems = check_source(BAD, "bad.py", studies=frozenset({"baselines", "nll_table"}))
    text = "\n".join(problems)
    lines = {int(p.split(":")[1]) for p in problems}
    # every line of BAD from the first import on (bar the two plain `import scoresde...`) is flagged
    expected = {i + 1 for i, line in enumerate(BAD.splitlines())
                if line.strip() and line not in ("import scoresde", "import scoresde.sampling as S")}
    assert lines == expected, (sorted(expected - lines), text)
    for needle in ("scoresde.io is not public", "scoresde._utils is not public (underscored)",
                   "scoresde.evaluate is not public", "scoresde.train is not public",
                   "scoresde.not_a_name is not a public name", "scoresde.sde.Optional is not a public name",
                   "scoresde.targets.torch is not a public name", "scoresde.sde.as_time is not a public name",
                   "a study imports no other study",
                   ".spec_from_file_location runs code", "exec(...)", ".run_path runs code",
                   "._coeffs is a private attribute", "._time_vector is a private attribute",
                   "getattr(..., '_coeffs')", "scoresde.sampling._common is not public"):
        assert needle in text, (needle, text)


def test_checker_passes_public_use_and_the_studys_own_private_attributes():
    assert check_source(GOOD, "good.py") == []
    # the study's own `_kept` is allowed even if a scoresde class has an attribute of that name
    assert "_coeffs" in scoresde_private_attributes()  # set in a loop in sde.py: seen at run time
    assert check_source("x._coeffs\n", own_private=frozenset({"_coeffs"})) == []


def test_function_lengths_exclude_the_docstring():
    body = "\n".join(f"    x{i} = {i}" for i in range(3))
    src = f'def f():\n    """one\n    two\n    """\n{body}\n'
    assert function_lengths(src) == {"f (line 1)": 4}
