"""The package's layers: data flows one way (space -> latency -> distillation -> search -> artifact), and the
runtime half of an artifact imports no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kdnas_deploy"


def imports_of(folder: str) -> dict[str, set[str]]:
    """Every kdnas_deploy module each file under `folder` imports, at the top or inside a function."""
    out: dict[str, set[str]] = {}
    for path in (PACKAGE / folder).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[str(path.relative_to(PACKAGE))] = {n for n in names if n.startswith("kdnas_deploy")}
    return out


def test_search_knows_nothing_of_export_and_artifacts_nothing_of_training():
    for path, names in imports_of("search").items():
        assert not any(n.startswith(("kdnas_deploy.artifact", "kdnas_deploy.pipeline")) for n in names), (path, names)
    for path, names in imports_of("artifact").items():
        assert not any(n.startswith(("kdnas_deploy.distill.trainer", "kdnas_deploy.distill.api", "kdnas_deploy.search"))
                       for n in names), (path, names)
    for path, names in imports_of("latency").items():
        assert not any(n.startswith(("kdnas_deploy.distill", "kdnas_deploy.search", "kdnas_deploy.artifact"))
                       for n in names), (path, names)


def test_scoring_rows_with_an_artifact_needs_no_torch():
    """Batching, data preparation and the artifact runtime import with torch made unimportable."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import kdnas_deploy.data.batching, kdnas_deploy.data.prepare, kdnas_deploy.artifact.runtime\n"
            "from kdnas_deploy.data.batching import pad_rows\n"
            "b = pad_rows([{'input_ids': [1, 2, 3], 'attention_mask': [1, 1, 1], 'token_type_ids': [0, 0, 0], 'labels': 1},"
            " {'input_ids': [4], 'attention_mask': [1], 'token_type_ids': [0], 'labels': 0}], pad_token_id=9)\n"
            "assert b['input_ids'].tolist() == [[1, 2, 3], [4, 9, 9]] and b['attention_mask'].tolist() == [[1, 1, 1], [1, 0, 0]]\n"
            "assert str(b['labels'].dtype) == 'int64'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_loading_the_artifact_modules_loads_no_training_or_search_code():
    code = ("import sys\n"
            "import kdnas_deploy.artifact.export, kdnas_deploy.artifact.serve, kdnas_deploy.artifact.predict\n"
            "loaded = [m for m in sys.modules if m.startswith(('kdnas_deploy.distill.', 'kdnas_deploy.search'))]\n"
            "assert not loaded, loaded\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
