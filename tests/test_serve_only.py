"""A serving-only install: `predict`, `serve` and `version` without torch, transformers, datasets or pandas, and a
training command there says which extra to install."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TRAIN_ONLY = ["torch", "transformers", "datasets", "optimum", "pandas", "pyarrow", "matplotlib", "scipy", "onnx",
              "safetensors", "huggingface_hub"]


def blocker_cli(blocked_packages: set[str]) -> str:
    """Python code running the CLI with these packages made unimportable, as on an install that lacks them."""
    return (
        "import sys\n"
        f"BLOCKED = {blocked_packages!r}\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "sys.argv = ['kdnas-deploy'] + sys.argv[1:]\n"
        "from kdnas_deploy.cli import main\n"
        "main()\n"
    )


#: The CLI without the training packages, as on an install without the `train` extra.
BLOCKED_CLI = blocker_cli(set(TRAIN_ONLY))


def blocked(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_CLI, *args], capture_output=True, text=True, timeout=120, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def serve_and_ask(command: list[str], env: dict | None = None) -> tuple[int, dict, int, dict]:
    port = _free_port()
    proc = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read())
                time.sleep(0.5)
        good = _post(port, {"inputs": ["a wonderful, moving film", "dull and lifeless"]})
        bad = _post(port, {"inputs": "not a list"})
        return (*good, *bad)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_predict_serve_and_version_run_without_the_training_packages(int8_artifact: Path, tmp_path: Path) -> None:
    text = blocked("predict", str(int8_artifact), "a wonderful, moving film", "--json")
    assert text.returncode == 0, text.stderr
    rows = [json.loads(line) for line in text.stdout.splitlines() if line.strip()]
    assert rows and rows[0]["label"] in ("negative", "positive") and 0.5 <= rows[0]["score"] <= 1
    table = tmp_path / "in.csv"
    table.write_text('text\n"a wonderful, moving film"\ndull and lifeless\n')
    from_file = blocked("predict", str(int8_artifact), "--input", str(table), "--json")
    assert from_file.returncode == 0, from_file.stderr
    assert len([line for line in from_file.stdout.splitlines() if line.strip()]) == 2
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text\na,b\n")
    bad = blocked("predict", str(int8_artifact), "--input", str(ragged))
    assert bad.returncode == 2 and "ragged" in bad.stderr and "Traceback" not in bad.stderr
    version = blocked("version")
    assert version.returncode == 0 and "onnxruntime" in version.stdout
    status, body, bad_status, bad_body = serve_and_ask([sys.executable, "-c", BLOCKED_CLI, "serve", str(int8_artifact)])
    assert status == 200 and len(body["predictions"]) == 2
    assert bad_status == 422 and "error" in bad_body


def test_a_training_command_without_the_training_packages_names_the_extra(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    for args in (["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H64-A2-I128", "--out", str(tmp_path / "s")],
                 ["profile", "--hw", "cpu"]):
        run = blocked(*args)
        assert run.returncode == 2, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'kdnas-deploy[train]'" in lines[0] and "Traceback" not in run.stderr


def test_a_missing_base_dependency_is_named_with_the_reinstall_not_reported_as_a_bug(int8_artifact: Path) -> None:
    # uvicorn[standard]'s HTTP parser; found missing on a GPU machine where packages were installed with --no-deps
    run = subprocess.run([sys.executable, "-c", blocker_cli({"httptools"}), "serve", str(int8_artifact), "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "httptools is not installed" in error[0] and "kdnas-deploy[cpu]" in error[0], out
    assert "internal error" not in out and "Traceback" not in out


@pytest.mark.slow
def test_a_fresh_serving_install_has_no_torch_and_serves(int8_artifact: Path, tmp_path: Path) -> None:
    """The serving install as a user makes it: a new virtual environment, `pip install .[cpu]`, nothing else."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{REPO}[cpu]"], capture_output=True, text=True,
                             timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    assert subprocess.run([str(python), "-c", "import transformers"], capture_output=True).returncode != 0
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    cli = str(venv / "bin" / "kdnas-deploy")
    answer = subprocess.run([cli, "predict", str(int8_artifact), "a wonderful, moving film", "--json"], capture_output=True,
                            text=True, timeout=300, env=env, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout.splitlines()[0])["label"] in ("negative", "positive")
    status, body, bad_status, _ = serve_and_ask([cli, "serve", str(int8_artifact)], env=env)
    assert status == 200 and len(body["predictions"]) == 2 and bad_status == 422
    train = subprocess.run([cli, "profile", "--hw", "cpu"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert train.returncode == 2 and "kdnas-deploy[train]" in train.stderr
