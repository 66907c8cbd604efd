"""The project's own guard rails: the layout a newcomer and the interpreter rely on."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_operator_module_is_still_the_standard_librarys():
    # `operator/` is a folder of the project; were it a package on sys.path it would shadow the stdlib.
    import operator

    assert not (ROOT / "operator" / "__init__.py").exists()
    assert hasattr(operator, "itemgetter")
    assert Path(operator.__file__).parent != ROOT / "operator"


def test_operator_module_survives_python_dash_m_from_repo_root():
    code = "import operator, sys; print(operator.__file__); assert hasattr(operator, 'attrgetter')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "operator.py" in result.stdout


def _imports(package_dir: Path) -> set[str]:
    names: set[str] = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_operator_and_router_never_import_training_code():
    heavy = {"torch", "transformers", "datasets", "ray", "kubedistill_jobs", "onnxruntime"}
    assert not _imports(ROOT / "operator" / "kubedistill_operator") & heavy
    assert not _imports(ROOT / "router" / "kubedistill_router") & (heavy - {"onnxruntime"})


def test_the_operator_process_imports_no_numpy():
    # numpy is a tenth of the operator's memory at start-up and it computes nothing with it: the shared modules it
    # imports (the API models, the artifact layout) keep numpy behind the modules that compute (confidence).
    code = ("import sys, kubedistill.cli as cli; cli.build_parser(); import kubedistill_operator.main; "
            "print(sorted(m for m in ('numpy', 'pandas', 'torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_shared_api_package_stays_light():
    assert _imports(ROOT / "kubedistill") <= {
        "__future__", "argparse", "ast", "dataclasses", "datetime", "importlib", "json", "math", "pathlib",
        "pydantic", "sys", "typing", "yaml", "numpy", "kubedistill", "rich", "os", "re", "collections",
        "functools", "hashlib", "shutil", "tempfile", "time", "contextlib", "logging", "enum", "copy",
    }


def test_cli_registers_every_command():
    cli = importlib.import_module("kubedistill.cli")
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(cli.COMMANDS) <= set(commands)
