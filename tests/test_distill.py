from __future__ import annotations

import collections
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, cli_here
from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.distill.api import distill, evaluate_folder
from kdnas_deploy.data.prepare import prepare, proxy_split
from kdnas_deploy.distill.trainer import TrainConfig
from kdnas_deploy.data.encode import encode
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.model_folder import read_info


def _source(folder: Path) -> DataSource:
    return DataSource(task="sst2", data_dir=str(folder))


def _majority(folder: Path) -> float:
    labels = [line.rsplit("\t", 1)[1] for line in (folder / "dev.tsv").read_text().splitlines()[1:]]
    return max(collections.Counter(labels).values()) / len(labels)


def test_teacher_folder(tiny_teacher_dir: Path, sst2_slice: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    info = read_info(tiny_teacher_dir)
    assert info is not None and info.kind == "teacher" and info.task == "sst2" and info.arch == "L2-H64-A4-I128"
    assert info.label_names == ["negative", "positive"] and info.max_length == 64
    assert info.metrics["dev"]["accuracy"] > _majority(sst2_slice)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert AutoTokenizer.from_pretrained(tiny_teacher_dir)("a fine film")["input_ids"][0] == 2  # [CLS] of the trained vocab
    assert (tiny_teacher_dir / "model.safetensors").is_file() and not (tiny_teacher_dir / "checkpoint.pt").exists()


def test_random_student_learns_from_teacher(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    info = distill(str(tiny_teacher_dir), _source(sst2_slice), "L1-H32-A2-I64", out, init="random", max_length=64,
                   train_config=TrainConfig(epochs=4, learning_rate=1e-3))
    losses = [h["loss"] for h in info.training["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert info.metrics["dev"]["accuracy"] > _majority(sst2_slice)
    assert set(info.training["history"][0]["parts"]) == {"logits", "hidden", "relation"}
    saved = json.loads((out / "kdnas.json").read_text())
    assert saved["kind"] == "student" and saved["arch"] == "L1-H32-A2-I64" and saved["init"] == "random"
    assert saved["teacher"] == str(tiny_teacher_dir) and saved["data"]["data_dir"] == str(sst2_slice)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    # evaluating the saved folder reproduces the recorded dev metrics (task and data come from kdnas.json)
    assert evaluate_folder(str(out), DataSource())["accuracy"] == pytest.approx(saved["metrics"]["dev"]["accuracy"])


def test_proxy_run_scores_on_held_out_slice(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path) -> None:
    info = distill(str(tiny_teacher_dir), _source(sst2_slice), "L1-H64-A4-I128", tmp_path / "s", proxy=300, held_out=200,
                   max_length=64, train_config=TrainConfig(epochs=1))
    assert info.training["rows"] == 300 and set(info.metrics) == {"held_out", "dev"}
    prepared = prepare(str(tiny_teacher_dir), _source(sst2_slice), 64)
    split = proxy_split(prepared, 300, 200, seed=0)
    assert split.train_rows == proxy_split(prepared, 300, 200, seed=0).train_rows  # same rows for every candidate
    assert not set(split.train_rows) & set(split.held_out_rows)
    labels = collections.Counter(prepared.encoded.train.select(split.train_rows)["labels"])
    everything = collections.Counter(prepared.encoded.train["labels"])
    assert abs(labels[1] / 300 - everything[1] / 1500) < 0.01  # stratified
    with pytest.raises(KdnasError, match="needs 1600 training rows"):
        proxy_split(prepared, 1400, 200)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_distillation_is_deterministic_and_resumes_exactly(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path) -> None:
    kwargs = dict(proxy=200, held_out=100, max_length=64, train_config=TrainConfig(epochs=2, seed=5))
    a = distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "a", **kwargs)
    b = distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "b", **kwargs)
    assert a.metrics == b.metrics
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    class Crash(Exception):
        pass

    class CrashAfterFirstEpoch:
        def start(self, total: int, done: int) -> None: ...
        def step(self, loss: float) -> None: ...
        def stop(self) -> None: ...

        def epoch_end(self, epoch: int, metrics: dict) -> None:
            raise Crash

    with pytest.raises(Crash):
        distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "c", progress=CrashAfterFirstEpoch(), **kwargs)
    assert (tmp_path / "c" / "checkpoint.pt").is_file() and read_info(tmp_path / "c") is None
    other = dict(kwargs, train_config=TrainConfig(epochs=2, seed=6))
    with pytest.raises(KdnasError, match="written by a run with other settings"):  # never mixed into another run
        distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "c", **other)
    c = distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "c", **kwargs)
    def history(info):  # wall-clock seconds differ run to run; everything else must not
        return [{k: v for k, v in h.items() if k != "seconds"} for h in info.training["history"]]

    assert history(c) == history(a)
    assert c.metrics == a.metrics
    wc = _weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    assert not (tmp_path / "c" / "checkpoint.pt").exists()


def test_a_run_stopped_within_an_epoch_resumes_from_that_step_exactly(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A full-set epoch takes most of an hour on CPU: a crash within it must lose minutes, not the epoch, and the
    resumed run must be the run never stopped (same batches, dropout, optimizer and schedule state)."""
    from kdnas_deploy.distill import trainer

    kwargs = dict(proxy=200, held_out=100, max_length=64, train_config=TrainConfig(epochs=2, seed=3))  # 7 steps an epoch
    a = distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "a", **kwargs)

    class Crash(Exception):
        pass

    class CrashAtStep:
        def __init__(self, at: int) -> None:
            self.at = at

        def start(self, total: int, done: int) -> None:
            self.done = done

        def step(self, loss: float) -> None:
            self.done += 1
            if self.done == self.at:
                raise Crash

        def epoch_end(self, epoch: int, metrics: dict) -> None: ...
        def stop(self) -> None: ...

    monkeypatch.setattr(trainer, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every step
    ckpt = tmp_path / "c" / "checkpoint.pt"
    for at, (epoch, step) in ((4, (0, 3)), (11, (1, 3))):  # within the first epoch, then within the second
        with pytest.raises(Crash):
            distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "c",
                    progress=CrashAtStep(at), **kwargs)
        state = torch.load(ckpt, weights_only=True)
        assert (state["epoch"], state["step"]) == (epoch, step) and len(state["partial"]["losses"]) == step
    c = distill(str(tiny_teacher_dir), _source(sst2_slice), "L2-H32-A4-I64", tmp_path / "c", **kwargs)
    strip = lambda info: [{k: v for k, v in h.items() if k != "seconds"} for h in info.training["history"]]  # noqa: E731
    assert strip(c) == strip(a) and c.metrics == a.metrics
    assert c.training["steps"] == a.training["steps"] == 14
    wa, wc = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    assert not ckpt.exists()


def test_tokenisation_is_cached(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdnas_deploy.data.encode as enc
    from kdnas_deploy.data.sources import load_task_data
    from kdnas_deploy.model_folder import load_tokenizer

    data, tok = load_task_data(_source(sst2_slice)), load_tokenizer(str(tiny_teacher_dir))
    first = encode(data, tok, 64, cache=tmp_path)
    calls = []
    real = enc._tokenize
    monkeypatch.setattr(enc, "_tokenize", lambda *a: calls.append(a) or real(*a))
    again = encode(data, tok, 64, cache=tmp_path)
    assert calls == [] and again.train["input_ids"] == first.train["input_ids"]
    shorter = encode(data, tok, 16, cache=tmp_path)
    assert len(calls) == 2 and max(len(r) for r in shorter.train["input_ids"]) == 16


def test_teacher_must_fit_task(tiny_teacher_dir: Path, glue: Path, tmp_path: Path) -> None:
    with pytest.raises(KdnasError, match="teacher has 2 output"):
        distill(str(tiny_teacher_dir), DataSource(task="mnli", data_dir=str(glue / "MNLI")), "L1-H32-A2-I64", tmp_path / "x",
                proxy=50, held_out=50, train_config=TrainConfig(epochs=1))


def test_the_init_help_names_every_init_as_the_card_describes_it() -> None:
    from typer.testing import CliRunner

    from kdnas_deploy.cli import app
    from kdnas_deploy.distill import INIT_DESCRIPTIONS, INITS

    done = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    assert done.exit_code == 0, done.output
    flat = " ".join(done.output.replace("│", " ").split())
    assert set(INIT_DESCRIPTIONS) == set(INITS)
    for name, text in INIT_DESCRIPTIONS.items():
        assert f"{name}: {text}" in flat, (name, flat)


def test_cli_distill_and_errors(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-student"
    done = subprocess.run(cli("distill", "--teacher", str(tiny_teacher_dir), "--arch", "L1-H48-A4-I96", "--proxy", "100",
                              "--held-out", "50", "--epochs", "1", "--max-length", "32", "--layer-map", "1", "--out", str(out), "--json"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    assert card["arch"] == "L1-H48-A4-I96" and card["task"] == "sst2" and card["training"]["distill"]["layer_map"] == [0]
    assert read_info(out).arch == "L1-H48-A4-I96"  # type: ignore[union-attr]
    cases = [
        (["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L2-H50-A4-I64", "--out", str(tmp_path / "y")], "not divisible"),
        (["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L2-H32-A4-I64", "--init", "zeros", "--out", str(tmp_path / "y")], "use inherit, ranked, random"),
        (["distill", "--teacher", str(tmp_path / "none"), "--arch", "L2-H32-A4-I64", "--out", str(tmp_path / "y")], "cannot load the teacher"),
        (["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L2-H32-A4-I64", "--layer-map", "1,5", "--out", str(tmp_path / "y")], "numbered 1..2"),
        (["distill", "--teacher", str(tiny_teacher_dir), "--arch", "L2-H32-A4-I64", "--data-dir", str(sst2_slice), "--text-columns", "review",
          "--out", str(tmp_path / "y")], "missing column 'review'"),
        (["teacher", "--backbone", str(tiny_teacher_dir), "--out", str(tmp_path / "z")], "no data"),
        (["evaluate", str(out), "--task", "nope"], "unknown task 'nope'"),
    ]
    done = subprocess.run(cli(*cases[0][0]), capture_output=True, text=True, timeout=120)  # one as its own process
    assert done.returncode == 2 and cases[0][1] in done.stderr and "Traceback" not in done.stderr, done.stderr
    for args, message in cases[1:]:
        code, err = cli_here(args, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_length_buckets_keep_batches_random_complete_and_reproducible() -> None:
    """Rows of similar length share a batch, every row once per epoch, the same generator the same batches (so a
    resumed epoch skips exactly what it saw); buckets off is the order DataLoader(shuffle=True) drew before."""
    import random

    from kdnas_deploy.distill.trainer import batch_order

    rng = random.Random(3)
    lengths = [rng.randint(4, 128) for _ in range(1003)]
    a = batch_order(lengths, 32, 50, torch.Generator().manual_seed(7))
    b = batch_order(lengths, 32, 50, torch.Generator().manual_seed(7))
    assert a == b and len(a) == math.ceil(1003 / 32)
    assert sorted(i for batch in a for i in batch) == list(range(1003))
    assert a != batch_order(lengths, 32, 50, torch.Generator().manual_seed(8))

    def padded_share(batches: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in bt) * len(bt) for bt in batches) / sum(lengths) - 1

    plain = batch_order(lengths, 32, 0, torch.Generator().manual_seed(7))
    assert padded_share(a) < 0.1 < 0.5 < padded_share(plain)
    legacy = torch.utils.data.DataLoader(list(range(1003)), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(7))
    assert plain == [bt.tolist() for bt in legacy]
