"""Imports run one way: ``transforms/`` (the model, the pure functions and the DoFns) never imports
``pipeline/`` (entry points, options, loading), and neither imports the local stack, the
templates, the benchmark or the tests. Read from the source (every ``import`` statement, at any
depth, through the AST), so an import inside a function counts too."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Each folder, and the top-level packages its modules may not import.
FORBIDDEN = {
    "transforms": ("pipeline", "local", "templates", "bench", "tests"),
    "pipeline": ("local", "templates", "bench", "tests"),
}


def imported_packages(path: pathlib.Path):
    """``(line, top-level package)`` of every import in a module (relative imports as ``.``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, "." if node.level else (node.module or "").split(".")[0]


def modules_of(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(folder):
    modules = modules_of(folder)
    assert len(modules) > 10, f"no modules found under {folder}/"
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {package}"
             for path in modules for line, package in imported_packages(path)
             if package in FORBIDDEN[folder]]
    assert wrong == [], "imports that run the wrong way:\n" + "\n".join(wrong)


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from pipeline.config import Sync\n    return Sync\n")
    assert (4, "pipeline") in list(imported_packages(module))


def test_the_readmes_layout_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    missing = [str(path.relative_to(ROOT)) for folder in ("pipeline", "transforms", "local")
               for path in modules_of(folder)
               if path.name not in ("__init__.py", "__main__.py") and path.name not in layout]
    assert missing == [], "modules the README's Layout section does not name: " + ", ".join(missing)
