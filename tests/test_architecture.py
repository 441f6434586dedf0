"""Where code may import from: dispatcher/ above worker/, no cycles, lazy imports say why.

The contracts live in pyproject.toml (``[tool.importlinter]``); these tests run them in
``make test`` and add what import-linter does not check: a cycle between any two modules
(a package and its own submodule included), and a reason beside every import made inside
a function (the only reason kept is start-up time: ``# start-up: ...``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.procs import ROOT

PACKAGES = ("dispatcher", "worker")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
REASON = "start-up"  # the word a function-local import's comment must carry


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extras (pip install -e '.[dev]')")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.processes
def test_import_linter_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout, done.stdout


@pytest.mark.processes
def test_import_linter_catches_an_upward_import(tmp_path):
    """Positive control: the same contracts refuse a worker module importing dispatcher."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "worker" / "tasks.py").write_text("import dispatcher.runner\n")
    (tmp_path / "dispatcher" / "runner.py").write_text("import worker.tasks\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "worker never imports dispatcher BROKEN" in done.stdout, done.stdout
    assert "worker.tasks -> dispatcher.runner" in done.stdout, done.stdout


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every set of modules that import each other, directly or through others (Tarjan's
    strongly connected components of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == module:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """Every import of both packages, function-local ones included (they are imports too:
    a cycle hidden inside a function is still a cycle)."""
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)


def test_no_import_cycle_between_any_two_modules(graph):
    assert import_cycles(graph) == []
    worker_up = [(m, i) for m in graph.modules if m.split(".")[0] == "worker"
                 for i in graph.find_modules_directly_imported_by(m)
                 if i.split(".")[0] == "dispatcher"]
    assert worker_up == []


def test_the_cycle_check_finds_a_cycle(graph):
    """Positive control: one import back from records to the module it depends on."""
    assert "worker.keys" in graph.find_modules_directly_imported_by("worker.records")
    graph.add_import(importer="worker.keys", imported="worker.records")
    try:
        assert ["worker.keys", "worker.records"] in import_cycles(graph)
    finally:
        graph.remove_import(importer="worker.keys", imported="worker.records")
    assert import_cycles(graph) == []
def unexplained_local_imports(source: str) -> list[int]:
    """Line numbers of imports inside a function with no comment giving the reason
    (``REASON``) on the line or in the comment lines right above its group of imports."""
    lines = source.splitlines()
    found = []

    def explained(lineno: int) -> bool:
        i = lineno - 1
        if REASON in lines[i]:
            return True
        i -= 1
        while i >= 0:
            text = lines[i].strip()
            if text.startswith("#"):
                if REASON in text:
                    return True
            elif text and not text.startswith(("import ", "from ")):
                return False  # a blank line between import groups keeps the block going
            i -= 1
        return False

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                if not explained(child.lineno):
                    found.append(child.lineno)
            walk(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    walk(ast.parse(source), False)
    return found


def test_every_function_local_import_says_why():
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for lineno in unexplained_local_imports(path.read_text("utf-8")):
                missing.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert missing == [], ("imports inside a function need a comment saying what start-up "
                           f"time they save (or move them to the top): {missing}")


def test_the_local_import_check_flags_a_silent_one():
    """Positive control: the same function, with and without its reason."""
    silent = "def f():\n    import json\n    return json\n"
    said = "def f():\n    # start-up: json is slow to import\n    import json\n    return json\n"
    assert unexplained_local_imports(silent) == [2]
    assert unexplained_local_imports(said) == []


HEAVY = ("celery", "kombu", "redis", "sqlalchemy", "alembic", "worker.app", "uvicorn")


def modules_loaded(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.processes
def test_what_the_start_up_imports_buy():
    """Every ``forge`` command builds the whole parser (each subcommand's module): that
    loads none of Celery, Redis, SQLAlchemy or the web server, which load where used."""
    loaded = modules_loaded("import dispatcher.cli\ndispatcher.cli.build_parser()")
    assert "dispatcher.resume" in loaded and "dispatcher.doctor" in loaded
    assert sorted(loaded & set(HEAVY)) == []
    # Positive control: a run's modules do load them.
    assert {"celery", "worker.app"} <= modules_loaded("import dispatcher.runner")


def _module_map(text: str) -> dict[str, str]:
    """docs/architecture.md's module map: ``package/module.py`` -> its summary."""
    section = text[text.index("## Module map"):]
    end = section.find("\n## ", 3)
    entries: dict[str, str] = {}
    package = None
    for line in section[:end if end != -1 else None].splitlines():
        if line.startswith("**`") and line.endswith("/`**"):
            package = line[3:-4]
        elif line.startswith("* `") and package and "`: " in line:
            name, summary = line[3:].split("`: ", 1)
            entries[f"{package}/{name}"] = summary
    return entries


def _summaries() -> dict[str, str]:
    """Every module of dispatcher/ and worker/ (migrations aside) -> its docstring's
    first paragraph, on one line."""
    out = {}
    for base in ("dispatcher", "worker"):
        for path in (ROOT / base).rglob("*.py"):
            if "versions" in path.parts:
                continue
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            out[str(path.relative_to(ROOT))] = " ".join(doc.strip().split("\n\n")[0].split())
    return out


def test_the_module_map_lists_every_module_with_its_summary():
    documented = _module_map((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    actual = _summaries()
    assert sorted(set(actual) - set(documented)) == [], "modules missing from the map"
    assert sorted(set(documented) - set(actual)) == [], "the map lists modules that are gone"
    assert {k: v for k, v in actual.items() if documented[k] != v} == {}, \
        "summaries that drifted from the docstrings"
    # The positive control: a map missing one module, or with one summary changed, differs.
    one = next(iter(documented))
    assert _module_map("## Module map\n\n**`worker/`**\n\n* `x.py`: y\n") == {"worker/x.py": "y"}
    assert {k: v for k, v in documented.items() if k != one} != actual
