"""Hostile input, one class a test: each once ended in a traceback, ran code, or was silently accepted.

A user's bad input ends in one line starting `error:` and exit status 2; nothing a user owns is modified. The cases
that fail fast run `main()` in this process (conftest.cli_here), the way a user's shell would see them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_PROFILE, TINY_SPACE, cli_here
from kdnas_deploy.util.errors import KdnasError


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error:"), err
    for word in words:
        assert word in err, (word, err)


def binary_file(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 4)
    return path


# --- settings files: a directory, a binary file, the wrong shape -------------------------------------------------

@pytest.mark.parametrize("flag", ["--hw", "--space"])
def test_a_directory_or_a_binary_file_where_a_toml_file_belongs(flag: str, tmp_path: Path, capsys) -> None:
    table = str(tmp_path / "t.sqlite")
    folder = tmp_path / "looks.toml"
    folder.mkdir()
    one_line_error(*cli_here(["profile", "--table", table, flag, str(folder)], capsys), "is a directory")
    binary = binary_file(tmp_path / "binary.toml")
    one_line_error(*cli_here(["profile", "--table", table, flag, str(binary)], capsys), "binary file")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    one_line_error(*cli_here(["profile", "--table", table, flag, str(latin1)], capsys), "not UTF-8")


def test_search_config_that_is_a_directory_binary_or_of_the_wrong_types(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "run")
    one_line_error(*cli_here(["search", "--config", str(tmp_path), "--out", out], capsys), "is a directory")
    one_line_error(*cli_here(["search", "--config", str(binary_file(tmp_path / "b.toml")), "--out", out], capsys),
                   "binary file")
    config = tmp_path / "wrong.toml"
    config.write_text('teacher = "t"\nepisodes = "many"\n')
    one_line_error(*cli_here(["search", "--config", str(config), "--out", out], capsys), "episodes")
    config.write_text('teacher = 5\n')
    one_line_error(*cli_here(["search", "--config", str(config), "--out", out], capsys), "teacher must be a string")
    config.write_text('teacher = "t"\ndata = "sst2"\n')
    one_line_error(*cli_here(["search", "--config", str(config), "--out", out], capsys), "[data] must be a table")


@pytest.mark.parametrize("text", ["space = 5\n", "space = [1, 2]\n", 'layers = "four"\nhidden = [64]\nheads = [2]\nffn_ratios = [2]\n'])
def test_a_space_file_of_the_wrong_shape(text: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "space.toml"
    path.write_text(text)
    one_line_error(*cli_here(["profile", "--table", str(tmp_path / "t.sqlite"), "--space", str(path)], capsys), "space")


# --- places a command writes -------------------------------------------------------------------------------------

def test_table_and_out_that_are_files_lie_below_files_or_in_proc(tmp_path: Path, capsys, tiny_teacher_dir: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    base = ["profile", "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--calibration", "0", "--no-references"]
    one_line_error(*cli_here([*base, "--table", str(tmp_path)], capsys), "is a directory")
    one_line_error(*cli_here([*base, "--table", str(a_file / "t.sqlite")], capsys), "is a file, not a folder")
    one_line_error(*cli_here([*base, "--table", "/proc/kdnas/t.sqlite"], capsys), "cannot write there")
    distill = ["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H64-A4-I128"]
    one_line_error(*cli_here([*distill, "--out", str(a_file)], capsys), "--out", "is a file")
    one_line_error(*cli_here([*distill, "--out", str(a_file / "student")], capsys), "lies below")
    one_line_error(*cli_here([*distill, "--out", "/proc/kdnas-student"], capsys), "cannot write there")
    one_line_error(*cli_here(["teacher", "--backbone", str(tiny_teacher_dir), "--task", "sst2", "--out", str(a_file)], capsys),
                   "is a file")
    assert a_file.read_text() == "mine"


def test_an_unwritable_out_is_found_before_training(tiny_teacher_dir: Path, monkeypatch, capsys) -> None:
    """The check writes a probe file: made to fail here (root may write anywhere), it must stop the run before the
    data is even loaded."""
    import kdnas_deploy.distill.api as api

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    monkeypatch.setattr(api, "prepare", lambda *a, **k: pytest.fail("the data was loaded before --out was checked"))
    code, err = cli_here(["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H64-A4-I128", "--out", "/tmp/kdnas-x"], capsys)
    one_line_error(code, err, "cannot write there", "Permission denied")


def test_an_unknown_device_is_one_line(tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    for device in ("tpu", "cuda:x", "gpu0"):
        one_line_error(*cli_here(["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H64-A4-I128",
                                  "--out", str(tmp_path / "s"), "--device", device], capsys), "--device")


def test_an_architecture_too_big_for_memory_is_refused_before_allocating(tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    one_line_error(*cli_here(["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H65536-A1-I65536",
                              "--out", str(tmp_path / "s")], capsys), "GiB of memory")
    one_line_error(*cli_here(["profile", "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--table", str(tmp_path / "t.sqlite"),
                              "--calibration", "0", "--no-references", "--arch", "L1-H65536-A1-I65536"], capsys), "GiB of memory")


# --- checkpoints: no code runs, a damaged one is one line ----------------------------------------------------------

class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_no_code(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path, capsys) -> None:
    import torch

    out = tmp_path / "student"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"key": _Payload(marker), "epoch": 0}, out / "checkpoint.pt")
    args = ["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H64-A4-I128", "--out", str(out),
            "--data-dir", str(sst2_slice), "--task", "sst2", "--max-length", "32", "--epochs", "1"]
    one_line_error(*cli_here(args, capsys), "checkpoint.pt", "safely")
    assert not marker.exists()
    (out / "checkpoint.pt").write_bytes(b"")  # an empty file once gave click's bare "Aborted!"
    one_line_error(*cli_here(args, capsys), "checkpoint.pt")
    torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")  # safe to read, but not ours
    one_line_error(*cli_here(args, capsys), "not a kdnas-deploy training checkpoint")


def test_checkpoints_of_this_version_and_the_last_load_with_weights_only(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from kdnas_deploy.distill import trainer

    state = {"key": "k", "epoch": 1, "objective": {}, "optimizer": {}, "scheduler": {}, **trainer._rng_states()}
    torch.save(state, tmp_path / "new.pt")
    expected = np.random.random(3)
    np.random.seed(123)
    trainer._set_rng_states(trainer.load_checkpoint(tmp_path / "new.pt"))
    assert np.random.random(3) == pytest.approx(expected)
    state["numpy_rng"] = np.random.get_state()  # 0.1.0 saved numpy's tuple with its ndarray as is
    torch.save(state, tmp_path / "old.pt")
    assert trainer.load_checkpoint(tmp_path / "old.pt")["epoch"] == 1


def test_no_torch_load_reads_a_file_in_full() -> None:
    root = Path(__file__).resolve().parent.parent
    offenders = [f"{p}:{n}" for p in (root / "kdnas_deploy").rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if "torch.load(" in line and "weights_only=True" not in line]
    assert offenders == []


# --- model folders and artifacts ---------------------------------------------------------------------------------

def test_a_backbone_without_a_trained_head_is_not_a_teacher(tiny_backbone: Path, sst2_slice: Path, tmp_path: Path, capsys) -> None:
    one_line_error(*cli_here(["distill", "--teacher", str(tiny_backbone), "--arch", "L1-H64-A4-I128", "--out", str(tmp_path / "s"),
                              "--data-dir", str(sst2_slice), "--task", "sst2"], capsys), "no trained classification head")
    assert not (tmp_path / "s").exists()  # --out was checked by writing there, and nothing is left behind


def test_damaged_weights_are_one_line(tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    one_line_error(*cli_here(["distill", "--teacher", str(teacher), "--arch", "L1-H64-A4-I128", "--out", str(tmp_path / "s")], capsys),
                   "cannot load a sequence classifier")


def _tampered(artifact: Path, tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "artifact"
    shutil.copytree(artifact, folder)
    card = json.loads((folder / "kdnas_card.json").read_text())
    for key, value in changes.items():
        if value is None:
            card.pop(key)
        else:
            card[key] = value
    (folder / "kdnas_card.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"file": "../../outside.onnx"}, "not a file inside the artifact folder"),
    ({"file": "/etc/hostname"}, "not a file inside the artifact folder"),
    ({"file": None}, "file"),
    ({"label_names": []}, "label_names"),
    ({"max_length": "long"}, "max_length"),
    ({"max_length": 100000}, "position embeddings"),
    ({"profile": {"name": "x"}}, "profile.definition"),
    ({"pair": 1}, "pair"),  # strict: a number is not a yes
])
def test_a_malformed_card_is_one_line(fp32_artifact: Path, tmp_path: Path, capsys, changes: dict, words: str) -> None:
    folder = _tampered(fp32_artifact, tmp_path, **changes)
    one_line_error(*cli_here(["predict", str(folder), "a fine film"], capsys), words)


def test_a_card_that_is_not_an_object_and_input_that_is_not_utf8(fp32_artifact: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(fp32_artifact, folder)
    good = (folder / "kdnas_card.json").read_text()
    (folder / "kdnas_card.json").write_text("[1, 2]")
    one_line_error(*cli_here(["predict", str(folder), "a fine film"], capsys), "not an artifact card")
    (folder / "kdnas_card.json").write_text(good)
    for name in ("rows.jsonl", "rows.csv"):
        (tmp_path / name).write_bytes(b'{"text": "caf\xe9"}\n' if name.endswith("jsonl") else b"text\ncaf\xe9\n")
        one_line_error(*cli_here(["predict", str(folder), "--input", str(tmp_path / name)], capsys), "not UTF-8")
    (tmp_path / "lone.jsonl").write_text('{"text": "bad \\ud800 text"}\n')
    one_line_error(*cli_here(["predict", str(folder), "--input", str(tmp_path / "lone.jsonl")], capsys), "lone surrogate")


# --- data a run must not accept ----------------------------------------------------------------------------------

def _task_dir(tmp_path: Path, train: str) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.tsv").write_text(train)
    (folder / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
    return folder


@pytest.mark.parametrize("train, words", [
    ("sentence\tlabel\nit was fine\t1\tCOLS\nit was not\t0\n", "line 2 has 3 fields"),
    ("sentence\tlabel\nit was fine\t1\nit was not\n", "line 3 has 1 fields"),
    ("sentence\tlabel\nit was fine\t1\n\t0\n", "empty text"),
    ("sentence\tlabel\nit was fine\t1\nit was not\t\nsomething\t0\n", "empty label"),
])
def test_data_that_would_train_on_shifted_or_empty_rows_is_refused(train: str, words: str, tmp_path: Path) -> None:
    from kdnas_deploy.data.sources import DataSource, load_task_data

    with pytest.raises(KdnasError, match=words):
        load_task_data(DataSource(data_dir=str(_task_dir(tmp_path, train))))


def test_settings_out_of_range_are_refused(tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    base = ["search", "--teacher", str(tiny_teacher_dir), "--out", str(tmp_path / "r"), "--dry-run"]
    one_line_error(*cli_here([*base, "--speedup", "-3"], capsys), "--speedup must be a positive number")
    one_line_error(*cli_here([*base, "--target-ms", "0"], capsys), "--target-ms must be a positive number")


def test_a_damaged_run_file_on_resume(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for text, words in (("{not json", "damaged"), ('{"settings": [1]}', "damaged"),
                        ('{"settings": {"teacher": "t", "data": {}, "episodes": "x"}}', "episodes")):
        (run / "run.json").write_text(text)
        one_line_error(*cli_here(["search", "--resume", "--out", str(run)], capsys), words)
    binary_file(run / "run.json")
    one_line_error(*cli_here(["search", "--resume", "--out", str(run)], capsys), "binary file")


def test_a_bug_of_ours_is_one_line_too(monkeypatch, capsys) -> None:
    import kdnas_deploy.cli as cli_module

    def broken(**_kwargs) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_module, "app", broken)
    code, err = cli_here(["version"], capsys)
    assert code == 1 and err.startswith("error: internal error (ZeroDivisionError") and "KDNAS_DEBUG" in err
    assert len(err.strip().splitlines()) == 1


# --- a flag given equal to its default still overrides --config ----------------------------------------------------

def test_a_flag_equal_to_its_default_overrides_the_config(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import kdnas_deploy.search.dry_run as run

    seen = {}
    config = tmp_path / "s.toml"
    config.write_text(f'teacher = "{tiny_teacher_dir}"\nepisodes = 3\ntop_k = 2\n[data]\ntask = "sst2"\ndata_dir = "{sst2_slice}"\n')

    class Stop(Exception):
        pass

    def capture(settings):
        seen["settings"] = settings
        raise Stop

    monkeypatch.setattr(run, "dry_run", capture)
    monkeypatch.setenv("KDNAS_DEBUG", "1")  # let Stop through main()'s last-resort handler
    with pytest.raises(Stop):
        cli_here(["search", "--config", str(config), "--episodes", "4", "--dry-run", "--out", str(tmp_path / "r")], capsys)
    assert seen["settings"].episodes == 4  # the default's value, typed: the user's word
    assert seen["settings"].top_k == 2  # not typed: the file's


# --- machine facts -------------------------------------------------------------------------------------------------

def test_cpu_count_follows_the_cgroup_quota_and_affinity(tmp_path: Path, monkeypatch) -> None:
    from kdnas_deploy.util.resources import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert usable_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus(tmp_path) == 2  # 1.5 CPUs of time: two threads, not one
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3})
    assert usable_cpus(tmp_path) == 2


def test_any_provider_onnx_runtime_knows_is_a_valid_profile(tmp_path: Path) -> None:
    from kdnas_deploy.hardware import load_profile

    path = tmp_path / "coreml.toml"
    path.write_text('[runtime]\nprovider = "CoreMLExecutionProvider"\n[model]\nprecision = "fp32"\n[shape]\nbatch_size = 1\nseq_len = 128\n')
    profile = load_profile(path)
    with pytest.raises(KdnasError, match="needs CoreMLExecutionProvider, but this onnxruntime offers"):
        profile.check_runnable()
    path.write_text(path.read_text().replace("CoreML", "Imaginary"))
    with pytest.raises(KdnasError, match="unknown provider 'ImaginaryExecutionProvider'"):
        load_profile(path)


# --- state on disk: temp folders of dead runs, shared work --------------------------------------------------------

def test_a_dead_profilers_temp_folder_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    from kdnas_deploy.latency.profiler import WORKDIR_PREFIX, remove_stale_workdirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{WORKDIR_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{WORKDIR_PREFIX}{os.getpid()}-def"
    old_style = tmp_path / f"{WORKDIR_PREFIX}xyz"
    for folder in (stale, live, old_style):
        (folder / "g0").mkdir(parents=True)
        (folder / "g0" / "model.onnx").write_bytes(b"0" * 1000)
    os.utime(old_style, (0, 0))
    assert sorted(remove_stale_workdirs(tmp_path)) == sorted([stale, old_style])
    assert live.is_dir() and not stale.exists()


def test_an_item_claimed_by_a_live_run_is_left_to_it(tmp_path: Path) -> None:
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.space import StudentArch

    arch = StudentArch(1, 64, 2, 128)
    with LatencyTable(tmp_path / "t.sqlite") as table:
        key = ("fp", "block", arch, 1, 16)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        db = sqlite3.connect(tmp_path / "t.sqlite")
        for pid in (1, dead.pid):  # init always runs; the other process has exited
            db.execute("INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?,?,?,?)",
                       ("fp", "block", str(arch), 1, 16, __import__("socket").gethostname(), pid, 0.0))
            db.commit()
            assert table.claim(*key) is (pid != 1)
        assert table.claim(*key)  # ours already: still ours
        db.close()


def test_two_profilers_on_one_table_share_the_work(tmp_path: Path, fast_profile, monkeypatch) -> None:
    """Another live run holds half of the items (as it would have claimed them first); this run times only the rest,
    and counts the other half as cached once that run stores them."""
    import socket
    import threading

    import kdnas_deploy.latency.profiler as profiler
    from kdnas_deploy.latency.predictor import LatencyModel
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.latency.timing import Timing
    from test_predictor import SPACE, CostModel

    monkeypatch.setattr(profiler, "CLAIM_POLL_S", 0.05)
    items = profiler.plan(SPACE, 4)
    theirs = items[::2]
    path = tmp_path / "t.sqlite"
    with LatencyTable(path) as table:
        cost = CostModel()
        model = LatencyModel(table, fast_profile, measurer=cost)
        db = sqlite3.connect(path, timeout=30)
        for kind, arch in theirs:  # pid 1 runs as long as the machine does: a live claim
            db.execute("INSERT INTO claims VALUES (?,?,?,?,?,?,?,?)",
                       (model.fingerprint, kind, str(arch), model.batch, model.seq_len, socket.gethostname(), 1, 0.0))
        db.commit()
        db.close()

        def other_run() -> None:  # stores its items a little later, from its own connection
            with LatencyTable(path) as mine:
                for kind, arch in theirs:
                    ms = cost.true_ms(arch)
                    mine.put(model.fingerprint, kind, arch, model.batch, model.seq_len, Timing(ms, ms, ms, 0.0, 3, 1, False), arch.layers, 0.0)

        later = threading.Timer(0.3, other_run)
        later.start()
        result = profiler.profile_items(model, items)
        later.join()
    assert sorted(map(str, result.measured)) == sorted(map(str, [it for it in items if it not in theirs]))
    assert sorted(map(str, result.cached)) == sorted(map(str, theirs))
    assert not any(arch in {a for _, a in theirs} and arch not in {a for _, a in items if (_, a) not in theirs}
                   for arch in cost.calls)


def test_ctrl_c_says_what_is_kept_and_exits_130(tmp_path: Path) -> None:
    import signal
    import time

    from conftest import cli

    # Work left after the first group (8 graphs) is stored, many seconds of it, so that the signal lands mid-run even
    # when this process is slow to read the line (the run's threads hold both cores): 13 widths the space lacks each
    # add their own base, stem and block.
    more = [flag for w in range(48, 272, 16) if w != 64 for flag in ("--arch", f"L2-H{w}-A2-I{2 * w}")]
    slow = tmp_path / "slow-cpu.toml"
    slow.write_text(FAST_PROFILE.read_text().replace('name = "fast-cpu"', 'name = "slow-cpu"')
                    .replace("repeats = 3", "repeats = 50") + "min_round_ms = 200\n")
    proc = subprocess.Popen(cli("profile", "--hw", str(slow), "--space", str(TINY_SPACE), "--calibration", "3",
                                "--no-references", "--table", str(tmp_path / "t.sqlite"), *more),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KDNAS_PROGRESS_EVERY_S": "0"},
                            # A shell starts background jobs with SIGINT ignored, and the child would inherit that:
                            # Ctrl-C must reach the run as it does from a terminal.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    seen = ""
    deadline = time.time() + 120
    while not re.search(r": timed (base|stem|block|model) ", seen) and time.time() < deadline:  # a row is stored
        seen += proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; finished work is kept" in err and "Traceback" not in err
    rows = sqlite3.connect(tmp_path / "t.sqlite").execute("SELECT COUNT(*) FROM timings").fetchone()[0]
    assert 1 <= rows < 9 + 3 * 13  # the first group is kept; the run did not finish


# --- empty values: click reads `--out ""` as the working directory and `--teacher ""` as no teacher ---------------

def _value_taking_parameters() -> list[tuple[list[str], str]]:
    """(command path, option) for every option that takes a value and every argument, of every command."""
    import typer

    from kdnas_deploy.cli import app

    found: list[tuple[list[str], str]] = []

    def walk(command, path: list[str]) -> None:  # typer's own copy of click: known by shape, not by class
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        for param in command.params:
            if param.param_type_name == "option" and not param.is_flag and param.opts[0].startswith("--"):
                found.append((path, param.opts[0]))
            elif param.param_type_name == "argument":
                found.append((path, "ARG"))

    walk(typer.main.get_command(app), [])
    return found


def test_every_option_and_argument_given_an_empty_value_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """Before, `distill --out ""` trained into the working directory, `search --out ""` wrote run.json there and
    `profile --teacher ""` profiled the default space for twenty minutes; each now stops before any work."""
    monkeypatch.chdir(tmp_path)
    params = _value_taking_parameters()
    assert len(params) > 60 and (["search"], "--out") in params and (["table", "merge"], "ARG") in params
    for path, option in params:
        for argv in ([*path, ""] if option == "ARG" else [*path, option, ""],
                     [*path, "  "] if option == "ARG" else [*path, f"{option}="]):
            code, err = cli_here(argv, capsys)
            one_line_error(code, err, "empty")
            assert "NoneType" not in err and (option == "ARG" or option in err), (argv, err)
    assert list(tmp_path.iterdir()) == []  # nothing written where the command ran


def test_an_empty_value_stops_a_real_process_before_any_work(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "kdnas_deploy.cli", "search", "--teacher", "x", "--out", ""],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    one_line_error(r.returncode, r.stderr, "--out: the value is empty")
    assert list(tmp_path.iterdir()) == []


# --- the wrong kind of folder: say what the path is and what was expected ------------------------------------------

def test_evaluate_on_a_missing_folder_an_artifact_or_a_plain_folder_says_what_it_is(int8_artifact: Path, tmp_path: Path,
                                                                                    capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plain = tmp_path / "plain"
    plain.mkdir()
    for path, words in [(tmp_path / "missing", ("no folder", "missing", "give --task and/or --data-dir")),
                        (int8_artifact, ("is an exported artifact (ONNX), not a model folder",)),
                        (plain, ("has no kdnas.json recording the task",))]:
        code, err = cli_here(["evaluate", str(path)], capsys)
        one_line_error(code, err, *words)
        assert "teacher folder" not in err


def test_export_of_a_gpt2_folder_says_it_is_not_a_bert_model(tmp_path: Path, capsys) -> None:
    """Before, it asked for --task: the folder records no task either, but the model is what is wrong."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    folder = tmp_path / "gpt2"
    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64)) \
        .save_pretrained(folder)
    code, err = cli_here(["export", str(folder), "--hw", "cpu", "--out", str(tmp_path / "art")], capsys)
    one_line_error(code, err.strip().splitlines()[-1], "is a 'gpt2' model", "BERT-architecture")  # after its status
    assert "--task" not in err and not (tmp_path / "art").exists()


def test_a_search_with_wrong_data_stops_before_timing_anything(tiny_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    """Before, the latency table was filled first (minutes for a real space), and only then was the data read."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    table, run = tmp_path / "t.sqlite", tmp_path / "run"
    code, err = cli_here(["search", "--teacher", str(tiny_teacher_dir), "--data-dir", str(empty), "--task", "sst2",
                          "--hw", str(FAST_PROFILE), "--space", str(TINY_SPACE), "--table", str(table),
                          "--out", str(run)], capsys)
    one_line_error(code, err.strip().splitlines()[-1], "no train file")
    assert not table.exists() and not (run / "run.json").exists()
