from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kdnas_deploy.hardware import load_profile
from kdnas_deploy.util.paths import glue_dir

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
FAST_PROFILE = DATA / "fast-cpu.toml"
TINY_SPACE = DATA / "tiny-space.toml"


def pytest_configure(config: pytest.Config) -> None:
    """Session-scoped fixtures run before the per-test cache below exists: give them a throw-away cache too."""
    import tempfile

    os.environ["KDNAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdnas-test-cache-")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may write to the user's cache: point the default table at a temporary folder."""
    monkeypatch.setenv("KDNAS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def fast_profile():
    return load_profile(FAST_PROFILE)


@pytest.fixture(scope="session")
def glue() -> Path:
    path = glue_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"GLUE data folder missing in CI: {path} (set KDNAS_GLUE_DIR)")
        pytest.skip(f"GLUE data folder not found: {path} (set KDNAS_GLUE_DIR)")
    return path


def bump_schema_version(path: Path, version: int = 99) -> None:
    """Make an SQLite file of ours look written by a newer kdnas-deploy (latency table and journal share the key)."""
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    con.commit()
    con.close()


def as_other_machine(source: Path, target: Path, fingerprint: str) -> str:
    """Copies `fingerprint`'s rows of the table at `source` into the table at `target` as if another machine (another
    CPU) had measured them, the way a table profiled on a deployment target arrives; returns that machine's id."""
    from kdnas_deploy.fingerprint import fingerprint_id
    from kdnas_deploy.latency.table import LatencyTable

    with LatencyTable(source) as table:
        rows = table.export_rows(fingerprint)
    info = {**rows["fingerprint"]["info"], "cpu": "Deployment Target CPU", "cpu_features": other_cpu_features()}
    other = fingerprint_id(info)
    at = rows["columns"].index("fingerprint")
    rows["fingerprint"] = {**rows["fingerprint"], "id": other, "info": info}
    rows["timings"] = [[other if i == at else v for i, v in enumerate(row)] for row in rows["timings"]]
    with LatencyTable(target) as table:
        table.import_rows(rows)
    return other


def other_cpu_features() -> list[str]:
    """An instruction set that is not this host's, whatever the host: its features with AMX's bf16 flag toggled."""
    from kdnas_deploy.instruction_set import host_instruction_set

    here = set(host_instruction_set().features)
    return sorted(here ^ {"amx_bf16"})


def cli(*args: str) -> list[str]:
    """The command line of the installed CLI, run with this interpreter."""
    return [sys.executable, "-m", "kdnas_deploy.cli", *args]


def cli_here(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI's `main()` run in this process: the exit code and stderr a user would see, with the same parsing and
    error handling, for cases that fail fast. A fresh interpreter per case would pay 7 s to import torch and
    transformers each; the subprocess runs beside these keep the process-level behaviour tested. An exception that
    escapes `main` (a traceback for a user) fails the test here."""
    from kdnas_deploy import cli as cli_module

    argv = sys.argv
    sys.argv = ["kdnas-deploy", *args]
    try:
        cli_module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


@pytest.fixture(scope="session")
def sst2_slice(glue: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GLUE-format SST-2 folder of 1,500 seeded real training rows and the first 300 dev rows."""
    import random

    out = tmp_path_factory.mktemp("SST-2")
    head, *rows = (glue / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (out / "train.tsv").write_text("\n".join([head, *random.Random(0).sample(rows, 1500)]) + "\n", encoding="utf-8")
    dev = (glue / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (out / "dev.tsv").write_text("\n".join(dev[:301]) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_backbone(sst2_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (if small) BERT backbone folder: a WordPiece vocabulary of the slice's words, a 2 x 64 random BERT.

    The vocabulary is built here, deterministically: special tokens, every character alone and as a `##` piece (so
    any word of known characters tokenizes), then the most frequent words. The tokenizers library's WordPiece
    trainer breaks ties between equally frequent merges in a per-process random order, so each test session got
    another vocabulary, another teacher, and now and then a student that learnt only the majority class."""
    from collections import Counter

    import torch
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("backbone")
    texts = [line.split("\t")[0] for line in (sst2_slice / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    normalizer, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab += frequent[:1500 - len(vocab)]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_backbone: Path, sst2_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny backbone fine-tuned on the SST-2 slice by `make_teacher` (about 10 s on 2 cores)."""
    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.distill.api import make_teacher
    from kdnas_deploy.distill.trainer import TrainConfig

    out = tmp_path_factory.mktemp("teacher")
    make_teacher(str(tiny_backbone), DataSource(task="sst2", data_dir=str(sst2_slice)), out, max_length=64,
                 train_config=TrainConfig(epochs=4, learning_rate=1e-3))
    return out


STUDENT = "L1-H64-A4-I128"
#: The accuracy gate for fixtures that test export mechanics: open, so they do not hinge on int8 rounding.
MECHANICS_MAX_DROP = 100.0


@pytest.fixture(scope="session")
def student_dir(tiny_teacher_dir: Path, sst2_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer student distilled from the tiny teacher on the real SST-2 slice."""
    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.distill.api import distill
    from kdnas_deploy.distill.trainer import TrainConfig

    out = tmp_path_factory.mktemp("student")
    distill(str(tiny_teacher_dir), DataSource(task="sst2", data_dir=str(sst2_slice)), STUDENT, out, max_length=64,
            train_config=TrainConfig(epochs=2, learning_rate=1e-3))
    return out


@pytest.fixture(scope="session")
def int8_artifact(student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ships for CPU (`cpu-int8`): dynamic int8, activation scales computed per batch.

    The fixtures that test export mechanics export with the accuracy gate open (`MECHANICS_MAX_DROP`): how many of
    300 dev rows a one-layer 64-wide model's int8 rounding flips depends on the host's kernels (3 rows with AVX2,
    1 with AVX512-VNNI), and the gate has tests of its own (test_artifact.py)."""
    from kdnas_deploy.artifact.export import export_artifact

    out = tmp_path_factory.mktemp("artifacts") / "int8"
    table = tmp_path_factory.mktemp("table") / "latency.sqlite"
    export_artifact(student_dir, load_profile("cpu-int8"), out, table=table, max_drop=MECHANICS_MAX_DROP)
    return out


@pytest.fixture(scope="session")
def static_artifact(student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Static int8 (`cpu-int8-static`): its answers do not depend on how requests are batched."""
    from kdnas_deploy.artifact.export import export_artifact

    out = tmp_path_factory.mktemp("artifacts") / "int8-static"
    export_artifact(student_dir, load_profile("cpu-int8-static"), out, lengths="fixed",
                    table=tmp_path_factory.mktemp("table") / "latency.sqlite", measure=False, max_drop=MECHANICS_MAX_DROP)
    return out


@pytest.fixture(scope="session")
def fp32_artifact(student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kdnas_deploy.artifact.export import export_artifact

    out = tmp_path_factory.mktemp("artifacts") / "fp32"
    table = tmp_path_factory.mktemp("table") / "latency.sqlite"
    export_artifact(student_dir, load_profile("cpu"), out, table=table, measure=False, lengths="fixed")
    return out
