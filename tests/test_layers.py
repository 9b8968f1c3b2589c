"""The package's layers: lower modules never import upper ones, no import cycles, and the top-level
scripts stay thin command lines over the package (arguments + main)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "cehrgpt_tutorials"
SCRIPTS = ["load_omop.py", "export_omop.py", "cleanup_tokens.py", "inspect_synthetic.py", "predict.py"]
SCRIPT_LINE_LIMIT = 120

# Bottom to top: a module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("errors", "faults", "environment"),
    ("locks",),
    ("files", "paths"),
    ("db",),
    ("omop",),
    ("sequences",),
    ("generate", "report", "pipeline", "prediction", "show_patient"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def layer_of(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for rank, names in enumerate(LAYERS):
        if first in names:
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it to LAYERS")


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, set(modules)) - {name} for name, path in modules.items()}


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{module} imports {target}"
              for module, targets in import_graph().items() if module != "cehrgpt_tutorials"
              for target in targets if layer_of(target) > layer_of(module)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_package_imports_have_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_package_module_imports_a_top_level_script():
    scripts = {Path(name).stem for name in SCRIPTS}
    offenders = [f"{name} imports {script}" for name, path in package_modules().items()
                 for script in imported_modules(path, scripts)]
    assert not offenders, "\n".join(offenders)


def test_top_level_scripts_are_thin_command_lines():
    for name in SCRIPTS:
        text = (REPO_ROOT / name).read_text()
        functions = {node.name for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}
        assert "main" in functions, f"{name} has no main()"
        lines = len(text.splitlines())
        assert lines <= SCRIPT_LINE_LIMIT, f"{name} has {lines} lines; its work belongs in a package module"


FUNCTION_LINE_LIMIT = 80
SHELL_LINE_LIMIT = 120


def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + [REPO_ROOT / name for name in SCRIPTS]


def test_functions_fit_on_a_screen_or_say_they_are_flat_recipes():
    """A long function that mixes jobs is hard to change; one recipe read top to bottom is fine, and
    its docstring says so ("A flat recipe: ...")."""
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINE_LIMIT and "flat recipe" not in (ast.get_docstring(node) or "").lower():
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines that do not say they are flat recipes:\n" + "\n".join(long)


def test_shell_scripts_are_glue():
    for path in sorted((PACKAGE / "scripts").glob("*.sh")) + [REPO_ROOT / "setup_env.sh"]:
        lines = len(path.read_text().splitlines())
        assert lines <= SHELL_LINE_LIMIT, f"{path.relative_to(REPO_ROOT)} has {lines} lines; decisions belong in Python"


def test_the_demo_download_cache_is_in_the_repository_root(monkeypatch):
    from cehrgpt_tutorials.omop.demo_data import cache_dir

    monkeypatch.delenv("CEHRGPT_CACHE_DIR", raising=False)
    assert cache_dir() == REPO_ROOT / ".cache"
