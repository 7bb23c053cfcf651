"""The documentation is checked like code.

* ``docs/api.md`` is generated from the public API (``scoresde.__all__``, grouped by the comments
  of that list) by :func:`render_api`; a test fails when the committed file differs from what the
  code says today. Regenerate it with ``python tests/test_docs.py``.
* Every public class and function has a docstring of its own; public constants (registries and
  name tuples, which cannot carry one) are described in :data:`CONSTANTS` instead, and a new
  constant without a line there fails the test.
* The ```python blocks of ``docs/recipes/property-testing.md`` are concatenated into one test
  module and run with pytest in a subprocess, so the recipe keeps working.
* Every relative Markdown link in ``README.md`` and ``docs/`` points to a file that exists.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scoresde

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"
RECIPE_MD = ROOT / "docs" / "recipes" / "property-testing.md"
REGENERATE = "python tests/test_docs.py"

# Public names that are data rather than code. They have no docstring of their own, so this one
# line describes them in docs/api.md. A public constant missing here fails test_public_docstrings.
CONSTANTS = {
    "SAMPLERS": "The samplers accepted by `sample(..., sampler=NAME)`, as a dict from name to `Sampler` instance "
                "(each with its `order`, `nfe_per_step`, `stochastic` and `default_grid`).",
    "GRIDS": "The named time grids accepted by every fixed-step sampler (`grid=NAME`): uniform, logsnr, karras, "
             "quadratic.",
    "PREDICTORS": "The predictors of the `\"pc\"` sampler (`predictor=NAME`), as a dict from name to class.",
    "CORRECTORS": "The correctors of the `\"pc\"` sampler (`corrector=NAME`), as a dict from name to class.",
    "METHODS": "The ODE methods accepted by `solve_ode(..., method=NAME)`, as a dict from name to solver class; "
               "`available_methods` filters it.",
    "PARAMETERIZATIONS": "What the network of a `ScoreModel` predicts: the noise, the score, the clean data or the "
                         "velocity.",
    "DATASETS": "The data set names accepted by `load_dataset` and by `scoresde train --dataset`.",
    "NULL_CLASS": "The class label that means \"no label\": a row labelled with it is evaluated unconditionally "
                  "(the network's null class, the mixture's marginal).",
}

# The concept pages that explain each group of __all__ (keys: the group comments of __init__.py).
GROUP_DOCS = {
    "SDEs and discrete chains": ["sde.md"],
    "oracles and toy data": ["sde.md", "recipes/property-testing.md"],
    "conditional models and classifier-free guidance": ["sampling.md", "likelihood.md", "training.md"],
    "sampling": ["sampling.md"],
    "likelihood": ["likelihood.md", "bounds.md"],
    "models trained elsewhere": ["interop.md"],
    "ODE solvers": ["solvers.md"],
    "score models, networks and training losses": ["training.md"],
    "training": ["training.md", "cli.md"],
    "data": ["likelihood.md", "training.md"],
    "two-sample metrics": ["metrics.md", "results.md"],
    "files": ["training.md", "cli.md"],
}


# ---------------------------------------------------------------------------------------------
# docs/api.md
# ---------------------------------------------------------------------------------------------
def public_groups() -> list[tuple[str, list[str]]]:
    """``(group title, names)`` in the order of ``__all__``, titles taken from its comments."""
    source = Path(scoresde.__file__).read_text()
    start = source.index("__all__ = [")
    end = source.index("\n]", start)
    groups: list[tuple[str, list[str]]] = []
    for line in source[start + len("__all__ = ["):end].splitlines():
        line = line.strip()
        if line.startswith("#"):
            groups.append((line.lstrip("# ").strip(), []))
        elif line:
            if not groups:
                groups.append(("public API", []))
            groups[-1][1].extend(re.findall(r"\"([A-Za-z_][A-Za-z0-9_]*)\"", line))
    flat = [name for _, names in groups for name in names]
    if flat != list(scoresde.__all__):
        raise AssertionError("could not read the groups of scoresde.__all__ from scoresde/__init__.py: "
                             "keep it a list literal of double-quoted names with '# group' comment lines")
    return groups


class _Shown:
    """Renders as the given text inside an ``inspect.Signature`` (annotations, defaults)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _annotation(a):
    if a is inspect.Parameter.empty:
        return a
    if isinstance(a, str):
        return _Shown(a)
    if isinstance(a, type):
        return _Shown(a.__name__ if a.__module__ == "builtins" else f"{a.__module__}.{a.__qualname__}")
    return _Shown(repr(a).replace("typing.", ""))


def _default(d):
    if d is inspect.Parameter.empty:
        return d
    if inspect.isfunction(d) or inspect.isclass(d):
        return _Shown(d.__name__)
    return _Shown(repr(d))


def _signature(name: str, obj) -> str:
    """``name(params) -> ret``, one parameter per line when it is long. Annotations are shown as
    written in the source (the package uses ``from __future__ import annotations``)."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=_annotation(p.annotation), default=_default(p.default))
              for p in sig.parameters.values()]
    ret = inspect.Signature.empty if inspect.isclass(obj) else _annotation(sig.return_annotation)
    sig = sig.replace(parameters=params, return_annotation=ret)
    text = f"{name}{sig}"
    if len(text) <= 96:
        return text
    body = str(sig.replace(return_annotation=inspect.Signature.empty))[1:-1]
    # split at the top-level commas only (defaults like (-1.0, 1.0) contain commas too)
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    tail = "" if ret is inspect.Signature.empty else f" -> {ret!r}"
    return f"{name}(\n" + "".join(f"    {p},\n" for p in parts) + f"){tail}"


_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")


def _first_paragraph(obj) -> str:
    doc = inspect.cleandoc(own_docstring(obj) or "")
    para = doc.split("\n\n")[0].strip()
    return _ROLE.sub(lambda m: "``" + (m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)) + "``", para)


def own_docstring(obj) -> str | None:
    """The docstring written for ``obj`` itself: not inherited, not generated by ``dataclass``."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        if doc and dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
            return None  # the signature dataclass() puts there when the class has no docstring
        return doc
    return getattr(obj, "__doc__", None)


def _entry(name: str) -> list[str]:
    obj = getattr(scoresde, name)
    out = [f"### `{name}`", ""]
    if name in CONSTANTS:
        shown = f"{name}.keys() == {tuple(obj)!r}" if isinstance(obj, dict) else f"{name} = {obj!r}"
        out += [f"A `{type(obj).__name__}` defined in `{_home(name)}`.", "", "```python", shown, "```", "",
                CONSTANTS[name], ""]
        return out
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        code = [f"class {name}({bases}):"] + [f"    {m.name} = {m.value!r}" for m in obj]
    elif inspect.isclass(obj) and issubclass(obj, BaseException):
        code = [f"class {name}({', '.join(b.__name__ for b in obj.__bases__)})"]
    elif inspect.isclass(obj):
        code = ["class " + _signature(name, obj)]
        if dataclasses.is_dataclass(obj):
            code.insert(0, "@dataclass(frozen=True)" if obj.__dataclass_params__.frozen else "@dataclass")
    else:
        code = ["def " + _signature(name, obj)]
    out += [f"Defined in `{obj.__module__}`.", "", "```python", *code, "```", "", _first_paragraph(obj), ""]
    abstract = sorted(getattr(obj, "__abstractmethods__", ()))
    if abstract:
        out += ["Abstract: a subclass implements " + ", ".join(f"`{a}`" for a in abstract) + ".", ""]
    return out


def _home(name: str) -> str:
    """The module that assigns the constant ``name`` at top level (found in the source, so the
    answer does not depend on which modules happen to be imported)."""
    pkg = Path(scoresde.__file__).parent
    for path in sorted(pkg.rglob("*.py")):
        if re.search(rf"^{name}\s*(?::[^=]+)?=", path.read_text(), flags=re.M):
            mod = ".".join(path.relative_to(pkg.parent).with_suffix("").parts)
            return mod.removesuffix(".__init__")
    return "scoresde"


def render_api() -> str:
    """The text of docs/api.md for the code as it is now."""
    groups = public_groups()
    lines = [
        "# API reference",
        "",
        "<!-- Generated by render_api() in tests/test_docs.py from scoresde.__all__ and the docstrings.",
        f"     Do not edit by hand: change the code, then run `{REGENERATE}`. -->",
        "",
        "Everything below is importable from the top-level package (`from scoresde import NAME`);",
        "nothing else is public. Each entry gives the signature and the first paragraph of the",
        "docstring; `help(NAME)` shows the rest. Names are grouped as in `scoresde.__all__`.",
        "See the [documentation index](index.md) for the concepts and the research workflows.",
        "",
    ]
    for title, names in groups:
        links = ", ".join(f"[`{n}`](#{n.lower()})" for n in names)
        lines.append(f"- **{title}**: {links}")
    lines.append("")
    for title, names in groups:
        lines += [f"## {title[0].upper()}{title[1:]}", ""]
        pages = GROUP_DOCS.get(title, [])
        if pages:
            lines += ["Concepts: " + ", ".join(f"[{p}]({p})" for p in pages) + ".", ""]
        for name in names:
            lines += _entry(name)
    return "\n".join(lines).rstrip() + "\n"


def test_api_md_is_generated_from_the_code():
    assert API_MD.exists(), f"docs/api.md is missing; generate it with `{REGENERATE}`"
    expected = render_api()
    if API_MD.read_text() != expected:
        pytest.fail(f"docs/api.md is out of date with scoresde.__all__ and the docstrings; "
                    f"regenerate it with `{REGENERATE}` and commit the result")


def test_every_group_has_a_concept_page():
    titles = [title for title, _ in public_groups()]
    assert sorted(titles) == sorted(GROUP_DOCS), "add the new __all__ group to GROUP_DOCS in tests/test_docs.py"


def test_public_docstrings():
    """Every public class and function documents itself; constants are described in CONSTANTS."""
    missing, undescribed = [], []
    for name in scoresde.__all__:
        obj = getattr(scoresde, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not (own_docstring(obj) or "").strip():
                missing.append(name)
        elif not CONSTANTS.get(name, "").strip():
            undescribed.append(name)
    assert not missing, f"public names without a docstring of their own: {missing}"
    assert not undescribed, f"public constants without a line in CONSTANTS (tests/test_docs.py): {undescribed}"
    stale = sorted(set(CONSTANTS) - set(scoresde.__all__))
    assert not stale, f"CONSTANTS describes names that are no longer public: {stale}"


# ---------------------------------------------------------------------------------------------
# The property-testing recipe runs as written
# ---------------------------------------------------------------------------------------------
def python_blocks(markdown: str) -> list[str]:
    """The bodies of the ```python fenced blocks, in order."""
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", markdown, flags=re.S | re.M)


def test_recipe_runs(tmp_path):
    blocks = python_blocks(RECIPE_MD.read_text())
    assert len(blocks) >= 4, "the recipe should hold its code in ```python blocks"
    module = "\n\n".join(blocks)
    tests = re.findall(r"^def (test_\w+)\(", module, flags=re.M)
    assert len(tests) >= 4, f"the recipe defines too few tests: {tests}"
    path = tmp_path / "test_recipe_property_testing.py"
    path.write_text(module)
    # one intra-op thread: the recipe's many small tensor operations run several times faster so
    # on a shared machine (see the single_thread fixture in conftest.py)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the recipe's tests failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert f"{len(tests)} passed" in proc.stdout, proc.stdout[-3000:]


# ---------------------------------------------------------------------------------------------
# Examples: every ```python block of the README and the docs runs as written
# ---------------------------------------------------------------------------------------------
# docs/api.md holds signatures, not examples; the recipe has its own test above.
EXAMPLE_PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
                 if p.name != "api.md" and p != RECIPE_MD]



@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run_as_written(page, tmp_path):
    """A page's examples run in order in a fresh interpreter (as a reader pastes them), in an
    empty folder, so what they write lands there."""
    blocks = python_blocks(page.read_text())
    if not blocks:
        return
    script = "\n".join(blocks)
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{page.name}: an example fails:\n{proc.stderr[-3000:]}"


def test_the_example_finder_sees_blocks():
    assert python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n") == ["a = 1\n"]
    assert any(python_blocks(p.read_text()) for p in EXAMPLE_PAGES)


# ---------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(markdown: str) -> list[str]:
    """Targets of the Markdown links and images outside code, without web links and pure anchors."""
    text = re.sub(r"^```.*?^```[ \t]*$", "", markdown, flags=re.S | re.M)  # fenced code
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    out = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto:, ... and anchors within the page
        out.append(target.split("#", 1)[0])
    return out


def test_relative_links_resolve():
    broken = []
    for md in markdown_files():
        for target in relative_links(md.read_text()):
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_the_link_checker_sees_links():
    sample = "see [a](docs/a.md#x), ![f](f.png), [web](https://x.org), [top](#t), `[no](code.md)`\n" \
             "```python\nx = fns[0](y)\n```\n"
    assert relative_links(sample) == ["docs/a.md", "f.png"]
    assert "docs/index.md" in relative_links((ROOT / "README.md").read_text())


if __name__ == "__main__":
    API_MD.write_text(render_api())
    print(f"wrote {API_MD.relative_to(ROOT)}")
