"""The layers of DESIGN.md hold: a lower layer never imports a higher one, no module imports another
package's private names, and packages import each other without circles.

Every module under ``src/deepworks`` is parsed with ``ast`` (never imported), so an import delayed into
a function counts as much as one at the top of a file: Python binds it later, but the dependency is the
same. Relative imports are resolved against the importing module.

A *package* is the first name under ``deepworks``: ``data``, ``models``, ... for subpackages, the module
itself for a top-level module (``pipeline``, ``config``, ...), and ``__init__`` for ``deepworks`` itself.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "deepworks"

# Bottom to top: a package may import its own layer and those below it. The order is docs/DESIGN.md's
# (the project's own, which wins over the shared design page): evaluation sits below training, because
# training computes its metrics with evaluation's accumulators, and evaluation needs nothing from training.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("core", frozenset({"errors", "config", "registry", "runtime", "runs", "version", "renamed"})),
    ("data", frozenset({"data"})),
    ("models", frozenset({"models"})),
    ("evaluation", frozenset({"evaluation"})),
    ("training", frozenset({"training"})),
    ("transfer", frozenset({"transfer"})),
    # autoconfig infers a config's data keys from the data itself (files or a DataFrame): beside the kinds
    ("kinds", frozenset({"kinds", "autoconfig"})),
    # the orchestrators: what train, predict, evaluate, inspect and the GAN runs call, and what the
    # capabilities above build on
    # inline: what Jupyter shows for a run (Run._repr_html_), and the card the capabilities' results draw on
    ("pipeline", frozenset({"pipeline", "predictor", "generation", "judge", "analysis", "inspection", "inline"})),
    # deepworks.train / resume: a GAN config to generation, every other to the pipeline
    ("front", frozenset({"front"})),
    ("capabilities", frozenset({"tune", "labs", "serve", "exporting", "reporting", "sklearn", "examples"})),
    ("cli", frozenset({"cli", "__main__", "__init__"})),
]
LAYER_OF = {package: rank for rank, (_, packages) in enumerate(LAYERS) for package in packages}
LAYER_NAME = {package: name for name, packages in LAYERS for package in packages}

# Imports inside one layer that are still against the design. GAN runs are routed at the front
# (cli and the public API pick `deepworks.generate` for a GAN config), so the pipeline never needs
# the GAN code.
FORBIDDEN_SAME_LAYER = {("pipeline", "generation")}

# Upward imports that are the design: a lab is a worked example of the public API and calls it as a
# user would (`deepworks.train(...)`, docs/DESIGN.md "labs"), so labs may import `deepworks` itself.
ALLOWED_UPWARD = {("labs", "__init__")}

# Circles inside one package that stay: splitting them would scatter one concept over files that
# only make sense together. Each is the exact set of modules of the circle (an SCC of the module
# graph); a circle that grows or shrinks fails the test, so a new one is a decision, not an accident.
ALLOWED_PACKAGE_CYCLES: dict[frozenset[str], str] = {
    frozenset({"deepworks.training.trainer", "deepworks.training.lr_finder"}): (
        "`lr: auto` in Trainer.fit runs the range test, and the range test validates its config, picks "
        "the device and places the data through a probe Trainer: one feature in two files"
    ),
}

# Violations still there, each an exact (file under src/deepworks, imported module or module.name)
# pair with the reason; the test fails when one no longer occurs, so the list only shrinks.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
    ("pipeline.py", "deepworks.reporting"): "a run writes its report.html at the end of training (and after a "
    "divergence), through the capability above the pipeline; moving that call to the front door "
    "(deepworks.front) needs the divergence path and cross_validate's final run to go there too",
}

# Old import paths kept, outside those files, only because those files still use them. Each is
# removed once the kinds work imports the new path; the test fails when it is no longer needed.
OLD_PATHS_KEPT: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    """One deepworks module importing another (or a name from it)."""

    importer: str  # dotted module name of the importing file
    file: str  # its path under src/deepworks, with "/"
    line: int
    target: str  # the module imported from: deepworks.data.tabular
    name: str | None = None  # the name imported from it when it is not a module itself: check_column
    type_only: bool = False  # under `if TYPE_CHECKING:`: for annotations, never run


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str  # module, or module.name for a private name
    message: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.file, self.imported)

    def __str__(self) -> str:
        where = self.file if self.file.startswith("tests/") else f"src/{ROOT}/{self.file}"
        return f"{where}:{self.line}: imports {self.imported}: {self.message}"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """``deepworks.data.tabular`` -> ``data``; ``deepworks.pipeline`` -> ``pipeline``; ``deepworks`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def scan(src: Path = SRC) -> tuple[dict[str, str], list[Import], list[Import]]:
    """Parse every module under ``src/deepworks``.

    Returns the modules (dotted name -> file), the imports between them, and the attribute reads
    ``module._name`` on a deepworks module bound by an import (private names reached without a
    ``from`` import), given as Imports whose ``name`` is the attribute.
    """
    files = sorted((src / ROOT).rglob("*.py"))
    modules = {module_name(path, src): path.relative_to(src / ROOT).as_posix() for path in files}
    imports: list[Import] = []
    attributes: list[Import] = []
    for path in files:
        importer = module_name(path, src)
        file = modules[importer]
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in _walk_body(block)}
        bound: dict[str, str] = {}  # local name -> deepworks module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                        imports.append(Import(importer, file, node.lineno, alias.name, None, id(node) in type_only))
                        # `import deepworks.a.b` binds `deepworks`; `import deepworks.a.b as c` binds c
                        bound[alias.asname or ROOT] = alias.name if alias.asname else ROOT
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(importer, is_package, node.module, node.level)
                if base != ROOT and not base.startswith(ROOT + "."):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        imports.append(Import(importer, file, node.lineno, sub, None, id(node) in type_only))
                        bound[alias.asname or alias.name] = sub
                    else:
                        imports.append(Import(importer, file, node.lineno, base, alias.name, id(node) in type_only))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                chain = _dotted(node.value)
                if chain is None or chain.split(".")[0] not in bound:
                    continue
                head, _, rest = chain.partition(".")
                target = bound[head] + (f".{rest}" if rest else "")
                if target in modules:
                    attributes.append(Import(importer, file, node.lineno, target, node.attr))
    return modules, imports, attributes


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_body(node: ast.If):
    """Every node of an ``if``'s body (not of its ``else``)."""
    for statement in node.body:
        yield from ast.walk(statement)


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]  # a package's __init__ is relative to itself
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def check(
    modules: dict[str, str],
    imports: list[Import],
    attributes: list[Import] = (),
    allowed_cycles: dict[frozenset[str], str] | None = None,
) -> list[Violation]:
    """Every import against the layers, every private name reached across packages, every circle."""
    allowed_cycles = ALLOWED_PACKAGE_CYCLES if allowed_cycles is None else allowed_cycles
    found: list[Violation] = []
    unknown = sorted({package_of(m) for m in modules} - set(LAYER_OF))
    if unknown:
        raise AssertionError(
            f"src/{ROOT} has packages no layer names: {unknown}; add each to LAYERS in tests/test_layers.py "
            "at the layer DESIGN.md gives it"
        )
    for imp in imports:
        src_pkg, dst_pkg = package_of(imp.importer), package_of(imp.target)
        if LAYER_OF[dst_pkg] > LAYER_OF[src_pkg] and (src_pkg, dst_pkg) not in ALLOWED_UPWARD:
            found.append(Violation(
                imp.file, imp.line, imp.target,
                f"{src_pkg} (layer {LAYER_NAME[src_pkg]}) must not import {dst_pkg} (layer "
                f"{LAYER_NAME[dst_pkg]}, higher); move the code it needs down, or this code up",
            ))
        elif (src_pkg, dst_pkg) in FORBIDDEN_SAME_LAYER:
            found.append(Violation(
                imp.file, imp.line, imp.target,
                f"{src_pkg} must not import {dst_pkg} (see FORBIDDEN_SAME_LAYER in tests/test_layers.py)",
            ))
    for imp in [*imports, *attributes]:
        src_pkg, dst_pkg = package_of(imp.importer), package_of(imp.target)
        if src_pkg == dst_pkg:
            continue
        private = [part for part in imp.target.split(".") if is_private(part)]
        if imp.name is not None and is_private(imp.name):
            private.append(imp.name)
        if private:
            shown = imp.target + (f".{imp.name}" if imp.name else "")
            found.append(Violation(
                imp.file, imp.line, shown,
                f"{private[-1]} is private to {dst_pkg}; make it public there (and use that name) "
                "or keep the code that needs it inside that package",
            ))
    found.extend(_cycles(modules, imports, allowed_cycles))
    # one line per finding: `from x import a, b` is one import of x
    return sorted(set(found), key=lambda v: (v.file, v.line, v.imported, v.message))


def _cycles(modules, imports, allowed_cycles) -> list[Violation]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    first: dict[tuple[str, str], Import] = {}
    for imp in imports:
        # an import for annotations only never runs, so it closes no circle; the layer and
        # private-name checks above still count it
        if imp.target in graph and imp.target != imp.importer and not imp.type_only:
            graph[imp.importer].add(imp.target)
            first.setdefault((imp.importer, imp.target), imp)
    found: list[Violation] = []
    # circles inside one package, each judged on that package's own imports (so a circle across
    # packages that happens to run through an allowed one does not hide or change it)
    seen_allowed: set[frozenset[str]] = set()
    for package in sorted({package_of(m) for m in graph}):
        inside = {m: {t for t in graph[m] if package_of(t) == package} for m in graph if package_of(m) == package}
        for scc in _sccs(inside):
            if len(scc) < 2:
                continue
            if frozenset(scc) in allowed_cycles:
                seen_allowed.add(frozenset(scc))
                continue
            path = _a_cycle(inside, scc)
            imp = first[(path[0], path[1])]
            found.append(Violation(
                imp.file, imp.line, imp.target,
                f"import circle inside {package}: {' -> '.join(path)}; break it, or name exactly "
                f"{sorted(scc)} in ALLOWED_PACKAGE_CYCLES with the reason it stays",
            ))
    # circles across packages: each import inside one that crosses packages sideways or upwards is
    # reported (a downward one follows the layers: the others are what to remove), so each can be
    # allowlisted or removed on its own
    for scc in _sccs(graph):
        packages = {package_of(m) for m in scc}
        if len(packages) < 2:
            continue
        cycle = " -> ".join(_a_cycle(graph, scc))
        for (src, dst), imp in sorted(first.items()):
            if src not in scc or dst not in scc or package_of(src) == package_of(dst):
                continue
            if LAYER_OF[package_of(dst)] >= LAYER_OF[package_of(src)]:
                found.append(Violation(
                    imp.file, imp.line, imp.target,
                    f"part of an import circle across packages {sorted(packages)}: {cycle}",
                ))
    for stale in set(allowed_cycles) - seen_allowed:
        found.append(Violation(
            "tests/test_layers.py", 0, "(circle)",
            f"ALLOWED_PACKAGE_CYCLES names {sorted(stale)}, which is no longer an import circle: "
            "remove it (or update it to the circle there is now)",
        ))
    return found


def _sccs(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to think about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result


def _a_cycle(graph: dict[str, set[str]], scc: set[str]) -> list[str]:
    """One concrete circle through the component, shortest from its first module (breadth first)."""
    start = sorted(scc)[0]
    parents: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & scc):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if child not in parents:
                parents[child] = node
                queue.append(child)
    return sorted(scc)


def _report(violations: list[Violation]) -> str:
    return "\n".join(str(v) for v in sorted(violations, key=lambda v: (v.file, v.line, v.imported)))


def test_layers_hold():
    modules, imports, attributes = scan()
    assert len(modules) > 50, f"found only {len(modules)} modules under {SRC / ROOT}: is SRC right?"
    violations = check(modules, imports, attributes)
    allowed = {**KNOWN_VIOLATIONS, **OLD_PATHS_KEPT}
    new = [v for v in violations if v.key not in allowed]
    if new:
        pytest.fail("imports against the layers of docs/DESIGN.md:\n" + _report(new), pytrace=False)
    gone = set(allowed) - {v.key for v in violations}
    if gone:
        pytest.fail(
            "KNOWN_VIOLATIONS or OLD_PATHS_KEPT in tests/test_layers.py list imports that no longer happen; "
            f"remove them so the lists only shrink: {sorted(gone)}",
            pytrace=False,
        )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_reports_a_planted_mistake(tmp_path):
    """A tree with one mistake of each kind: the checker names each, with its file and line."""
    _write(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "pipeline.py": "def prepare_data():\n    pass\n\ndef _helper():\n    pass\n",
        "generation.py": "",
        "data/__init__.py": "from .tabular import read\n",
        # a delayed, relative import of the orchestrator from the data layer
        "data/tabular.py": "import os\n\ndef read():\n    from ..pipeline import prepare_data\n",
        # a private name across packages, once by `from` and once as a module attribute
        "models/__init__.py": "",
        "models/summary.py": "from deepworks.data.tabular import _check\nimport deepworks.errors as e\ne._code\n",
        # a circle across two capabilities (same layer), one side delayed into a function
        "tune/__init__.py": "",
        "tune/results.py": "from deepworks.reporting import plots\n",
        "reporting/__init__.py": "",
        "reporting/plots.py": "def f():\n    import deepworks.tune.results\n",
        # the pipeline may not import generation though both sit in one layer
        "judge.py": "",
        "analysis.py": "from deepworks import generation, judge\n",
        "inspection.py": "from . import generation\n",
    })
    modules, imports, attributes = scan(tmp_path)
    report = _report(check(modules, imports, attributes, allowed_cycles={}))
    assert "data/tabular.py:4: imports deepworks.pipeline: data (layer data) must not import pipeline" in report
    assert "models/summary.py:1: imports deepworks.data.tabular._check: _check is private to data" in report
    assert "models/summary.py:3: imports deepworks.errors._code: _code is private to errors" in report
    assert "tune/results.py:1: imports deepworks.reporting.plots: part of an import circle" in report
    assert "reporting/plots.py:2: imports deepworks.tune.results: part of an import circle" in report
    assert "deepworks.reporting.plots -> deepworks.tune.results -> deepworks.reporting.plots" in report
    assert "analysis.py" not in report  # analysis is not the pipeline; generation is its neighbour
    # the rule names the pipeline package only; inspection sits in the pipeline layer but is not it
    assert "inspection.py" not in report
    _write(tmp_path, {"pipeline.py": "from deepworks import generation\n"})
    report = _report(check(*scan(tmp_path), allowed_cycles={}))
    assert "pipeline.py:1: imports deepworks.generation: pipeline must not import generation" in report


def test_checker_reports_circles_inside_a_package_unless_allowed(tmp_path):
    _write(tmp_path, {
        "__init__.py": "",
        "training/__init__.py": "",
        "training/trainer.py": "from .callbacks import Callback\n",
        "training/callbacks.py": "def f():\n    from deepworks.training.trainer import Trainer\n",
    })
    circle = frozenset({"deepworks.training.trainer", "deepworks.training.callbacks"})
    report = _report(check(*scan(tmp_path), allowed_cycles={}))
    assert "import circle inside train" in report
    assert check(*scan(tmp_path), allowed_cycles={circle: "why"}) == []
    _write(tmp_path, {"training/callbacks.py": ""})
    report = _report(check(*scan(tmp_path), allowed_cycles={circle: "why"}))
    assert "no longer an import circle" in report


def test_known_violations_are_only_in_the_files_being_rewritten():
    """The allowlist is for the kinds work's files only; anything else is fixed, not listed."""
    rewritten = ("pipeline.py", "generation.py", "judge.py", "analysis.py", "cli.py", "serve/", "exporting/")
    elsewhere = sorted(key for key in KNOWN_VIOLATIONS if not key[0].startswith(rewritten))
    assert not elsewhere, f"KNOWN_VIOLATIONS outside the files the kinds work rewrites: {elsewhere}"
    assert len(OLD_PATHS_KEPT) <= 1, "OLD_PATHS_KEPT is for the moves of issue 24 only; fix the import instead"
