"""Hostile-input probes, held out from the tests: run the real CLI and a real server as a careless or hostile user
would, and count what must never happen.

Counted: code executed from a file (a marker file appears), tracebacks on stderr, a bad input that exits other than
2 or prints more than one `error:` line, 5xx answers, connections a slow client can hold, and any change to a file
that is not the tool's own (a user's data, another application's database). Every probe here differs from the
cases in tests/test_hardening.py and tests/test_serve.py, so a fix tuned to the tests would not pass it unearned.

    python tools/probe_hardening.py --work bench-out/probes            # about 6 minutes on 2 cores
    python tools/probe_hardening.py --work bench-out/probes --json     # the counts as JSON on stdout

Needs the GLUE folder (KDNAS_GLUE_DIR or ../shared/data/glue) for a small real SST-2 slice; the tiny teacher and
artifact it builds from it are kept in --work and reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tally:
    probes: int = 0
    code_execution: int = 0
    tracebacks: int = 0
    unclean: list[str] = field(default_factory=list)  # bad input not answered with one error line and status 2
    accepted: list[str] = field(default_factory=list)  # bad input that ran as if it were good
    requests: int = 0
    server_5xx: int = 0
    held_connections: int = 0
    foreign_modified: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**self.__dict__, "unclean_count": len(self.unclean), "accepted_count": len(self.accepted)}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdnas_deploy.cli", *map(str, args)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


# --- fixtures: a tiny real teacher, student and artifact ----------------------------------------------------------

def fixtures(work: Path) -> dict[str, Path]:
    """A GLUE-format SST-2 slice, a 2 x 64 teacher trained on it, a one-layer student and its fp32 artifact."""
    from kdnas_deploy.util.paths import glue_dir

    data, teacher, student, artifact = work / "sst2", work / "teacher", work / "student", work / "artifact"
    if not (artifact / "kdnas_card.json").is_file():
        import torch
        from tokenizers import BertWordPieceTokenizer
        from transformers import BertConfig, BertModel, BertTokenizerFast

        from kdnas_deploy.artifact.export import export_artifact
        from kdnas_deploy.data.sources import DataSource
        from kdnas_deploy.distill.api import distill, make_teacher
        from kdnas_deploy.distill.trainer import TrainConfig
        from kdnas_deploy.hardware import load_profile

        data.mkdir(parents=True, exist_ok=True)
        head, *rows = (glue_dir() / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
        (data / "train.tsv").write_text("\n".join([head, *random.Random(7).sample(rows, 1200)]) + "\n", encoding="utf-8")
        dev = (glue_dir() / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
        (data / "dev.tsv").write_text("\n".join(dev[:201]) + "\n", encoding="utf-8")
        backbone = work / "backbone"
        backbone.mkdir(exist_ok=True)
        wordpiece = BertWordPieceTokenizer(lowercase=True)
        wordpiece.train_from_iterator([r.split("\t")[0] for r in rows[:3000]], vocab_size=1200, show_progress=False)
        wordpiece.save_model(str(backbone))
        BertTokenizerFast(vocab_file=str(backbone / "vocab.txt"), do_lower_case=True).save_pretrained(backbone)
        torch.manual_seed(1)
        BertModel(BertConfig(vocab_size=1200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=128)).save_pretrained(backbone)
        source = DataSource(task="sst2", data_dir=str(data))
        make_teacher(str(backbone), source, teacher, max_length=48, train_config=TrainConfig(epochs=2, learning_rate=1e-3))
        distill(str(teacher), source, "L1-H64-A4-I128", student, max_length=48, train_config=TrainConfig(epochs=1, learning_rate=1e-3))
        export_artifact(student, load_profile("cpu"), artifact, table=work / "latency.sqlite", measure=False, overwrite=True)
    return {"data": data, "teacher": teacher, "student": student, "artifact": artifact, "backbone": work / "backbone"}


# --- command-line probes -------------------------------------------------------------------------------------------

def cli_probes(work: Path, fx: dict[str, Path]) -> tuple[list[tuple[str, list, list[Path]]], Path]:
    """(name, arguments, files that must not change) for each probe, and the file a probe's code would create. Each
    is bad input: the answer must be one error line and status 2."""
    p = work / "inputs"
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)

    def write(name: str, data: bytes | str) -> Path:
        path = p / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    png = write("image.toml", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    utf16 = write("utf16.toml", 'name = "x"\n'.encode("utf-16"))
    empty = write("empty.toml", "")
    zero_layers = write("zero.toml", "[space]\nlayers = [0]\nhidden = [64]\nheads = [2]\nffn_ratios = [2]\n")
    frac = write("frac.toml", "layers = [1.5]\nhidden = [64]\nheads = [2]\nffn_ratios = [2]\n")
    no_heads = write("noheads.toml", "layers = [1]\nhidden = [64]\nheads = []\nffn_ratios = [2]\n")
    space_str = write("spacestr.toml", 'space = "big"\n')
    hw_list = write("hwlist.toml", "runtime = [1]\nmodel = 2\nshape = 3\n")
    teacher = fx["teacher"]
    cfg = lambda name, body: write(name, f'teacher = "{teacher}"\n' + body)  # noqa: E731
    budgets_int = cfg("budgets.toml", "budgets = 5\n")
    hw_str = cfg("hwstr.toml", 'hw = "cpu"\n')
    top_k_neg = cfg("topk.toml", "top_k = -2\n")
    data_list = cfg("datalist.toml", '[data]\ntext_columns = [1, 2]\n')
    wal = p / "wal.sqlite"
    con = sqlite3.connect(wal)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE notes (body TEXT)")
    con.execute("INSERT INTO notes VALUES ('mine')")
    con.commit()
    con.close()
    plain_file = write("plain.txt", "a user's file")
    gz = write("train.tsv.gz", b"\x1f\x8b\x08\x00" + bytes(range(200)))
    ragged = p / "ragged"
    ragged.mkdir()
    (ragged / "train.csv").write_text("text,label\nnice,1\nbad,0,extra\nok,1\n")
    (ragged / "dev.csv").write_text("text,label\nnice,1\nbad,0\n")
    dup = p / "dup"
    dup.mkdir()
    (dup / "train.csv").write_text("text,text,label\na,b,1\nc,d,0\n")
    (dup / "dev.csv").write_text("text,text,label\na,b,1\nc,d,0\n")
    header_only = p / "headeronly"
    header_only.mkdir()
    (header_only / "train.tsv").write_text("sentence\tlabel\n")
    (header_only / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    unknown_label = p / "unknownlabel"
    unknown_label.mkdir()
    (unknown_label / "train.tsv").write_text("sentence\tlabel\nfine\t1\nbad\t2\n")
    (unknown_label / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    nul_rows = write("nul.jsonl", b'{"text": "a\x00b"}\n\x00\x00\n')
    gpt = p / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text('{"model_type": "gpt2"}')
    broken_config = p / "brokenconfig"
    shutil.copytree(teacher, broken_config)
    (broken_config / "config.json").write_text("{ this is not json")
    ckpt_dir = p / "ckptdir"
    (ckpt_dir / "checkpoint.pt").mkdir(parents=True)
    evil = p / "evil"
    evil.mkdir()
    marker = work / "EXECUTED"
    _evil_checkpoint(evil / "checkpoint.pt", marker)
    run_dir = p / "rundir"
    (run_dir / "run.json").mkdir(parents=True)
    run_noteacher = p / "runnoteacher"
    run_noteacher.mkdir()
    (run_noteacher / "run.json").write_text('{"settings": {"data": {}}}')
    art = fx["artifact"]

    def card_variant(name: str, **changes) -> Path:
        folder = p / name
        shutil.copytree(art, folder)
        card = json.loads((folder / "kdnas_card.json").read_text())
        card.update(changes)
        (folder / "kdnas_card.json").write_text(json.dumps(card))
        return folder

    link_art = card_variant("linkart")
    (link_art / "outside.onnx").symlink_to("/etc/passwd")
    link_card = card_variant("linkcard", file="outside.onnx")
    (link_card / "outside.onnx").symlink_to("/etc/passwd")
    d = ["distill", "--teacher", teacher, "--out", p / "s"]
    return [
        ("--hw /etc (a directory)", ["profile", "--hw", "/etc", "--table", p / "t1.sqlite"], []),
        ("--hw a PNG", ["profile", "--hw", png, "--table", p / "t1.sqlite"], [png]),
        ("--hw UTF-16 text", ["profile", "--hw", utf16, "--table", p / "t1.sqlite"], [utf16]),
        ("--hw an empty file", ["profile", "--hw", empty, "--table", p / "t1.sqlite"], [empty]),
        ("--hw sections of the wrong type", ["profile", "--hw", hw_list, "--table", p / "t1.sqlite"], [hw_list]),
        ("--space layers 0", ["profile", "--space", zero_layers, "--table", p / "t1.sqlite"], [zero_layers]),
        ("--space fractional layers", ["profile", "--space", frac, "--table", p / "t1.sqlite"], [frac]),
        ("--space no heads", ["profile", "--space", no_heads, "--table", p / "t1.sqlite"], [no_heads]),
        ("--space space is a string", ["profile", "--space", space_str, "--table", p / "t1.sqlite"], [space_str]),
        ("--table another app's WAL database", ["profile", "--table", wal, "--no-references"], [wal]),
        ("--table a user's text file", ["profile", "--table", plain_file], [plain_file]),
        ("--table /dev/null", ["profile", "--table", "/dev/null"], []),
        ("--table under /sys", ["profile", "--table", "/sys/kdnas.sqlite"], []),
        ("profile --seq-len 100000", ["profile", "--seq-len", "100000", "--table", p / "t2.sqlite"], []),
        ("--config budgets = 5", ["search", "--config", budgets_int, "--out", p / "r", "--dry-run"], [budgets_int]),
        ("--config hw a string", ["search", "--config", hw_str, "--out", p / "r", "--dry-run"], [hw_str]),
        ("--config top_k -2", ["search", "--config", top_k_neg, "--out", p / "r", "--dry-run"], [top_k_neg]),
        ("--config text_columns of numbers", ["search", "--config", data_list, "--out", p / "r", "--dry-run"], [data_list]),
        ("search --budgets abc", ["search", "--teacher", teacher, "--budgets", "abc", "--out", p / "r", "--dry-run"], []),
        ("search --budgets -5", ["search", "--teacher", teacher, "--budgets", "-5", "--out", p / "r", "--dry-run"], []),
        ("search --speedup 0", ["search", "--teacher", teacher, "--speedup", "0", "--out", p / "r", "--dry-run"], []),
        ("search --target-ms nan", ["search", "--teacher", teacher, "--target-ms", "nan", "--out", p / "r", "--dry-run"], []),
        ("search --max-mb -1", ["search", "--teacher", teacher, "--max-mb", "-1", "--out", p / "r", "--dry-run"], []),
        ("search --out a file", ["search", "--teacher", teacher, "--out", plain_file, "--episodes", "1"], [plain_file]),
        ("search --resume, run.json a directory", ["search", "--resume", "--out", run_dir], []),
        ("search --resume, run.json without a teacher", ["search", "--resume", "--out", run_noteacher], []),
        ("distill --arch L0", [*d, "--arch", "L0-H64-A4-I128"], []),
        ("distill --arch garbage", [*d, "--arch", "big-model"], []),
        ("distill --arch heads not dividing", [*d, "--arch", "L2-H64-A3-I128"], []),
        ("distill --layer-map 9,9", [*d, "--arch", "L2-H64-A4-I128", "--layer-map", "9,9"], []),
        ("distill --device cuda:99", [*d, "--arch", "L1-H64-A4-I128", "--device", "cuda:99"], []),
        ("distill --device ''", [*d, "--arch", "L1-H64-A4-I128", "--device", ""], []),
        ("distill --arch too big (H32768)", [*d, "--arch", "L2-H32768-A2-I32768"], []),
        ("distill, checkpoint.pt a directory", ["distill", "--teacher", teacher, "--out", ckpt_dir, "--arch", "L1-H64-A4-I128"], []),
        ("distill, checkpoint runs subprocess", ["distill", "--teacher", teacher, "--out", evil, "--arch", "L1-H64-A4-I128",
                                                 "--epochs", "1"], []),
        ("distill --data-dir ragged csv", [*d, "--arch", "L1-H64-A4-I128", "--data-dir", ragged, "--task", "sst2"], []),
        ("distill --data-dir duplicate header", [*d, "--arch", "L1-H64-A4-I128", "--data-dir", dup], []),
        ("distill --data-dir header only", [*d, "--arch", "L1-H64-A4-I128", "--data-dir", header_only, "--task", "sst2"], []),
        ("distill --data-dir unknown label", [*d, "--arch", "L1-H64-A4-I128", "--data-dir", unknown_label, "--task", "sst2"], []),
        ("distill --train-file gzip bytes", [*d, "--arch", "L1-H64-A4-I128", "--train-file", gz, "--dev-file", gz], [gz]),
        ("teacher --backbone gpt2 config", ["teacher", "--backbone", gpt, "--task", "sst2", "--out", p / "t"], []),
        ("teacher --out /proc", ["teacher", "--backbone", fx["backbone"], "--data-dir", fx["data"], "--out", "/proc/k"], []),
        ("evaluate, config.json not JSON", ["evaluate", broken_config], []),
        ("export --out /proc", ["export", fx["student"], "--out", "/proc/kdnas-art"], []),
        ("export --out a file", ["export", fx["student"], "--out", plain_file], [plain_file]),
        ("predict, folder a file", ["predict", plain_file, "hello"], [plain_file]),
        ("predict, card file a symlink out", ["predict", link_card, "hello"], []),
        ("predict, label_names a string", ["predict", card_variant("labelstr", label_names="ab"), "hello"], []),
        ("predict, max_length -1", ["predict", card_variant("neglen", max_length=-1), "hello"], []),
        ("predict, regression 'yes'", ["predict", card_variant("regyes", regression="yes"), "hello"], []),
        ("predict, a bad profile in the card", ["predict", card_variant("badprof", profile={"definition": {"runtime": 1}}), "hello"], []),
        ("predict --input a directory", ["predict", art, "--input", p], []),
        ("predict --input NUL bytes", ["predict", art, "--input", nul_rows], [nul_rows]),
        ("predict --input ragged csv", ["predict", art, "--input", ragged / "train.csv"], []),
        ("serve --port 99999", ["serve", art, "--port", "99999"], []),
        ("serve --header-timeout 0", ["serve", art, "--header-timeout", "0"], []),
    ], marker


def _evil_checkpoint(path: Path, marker: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    torch.save({"key": "x", "epoch": 0, "objective": Payload(), "optimizer": {}, "scheduler": {}}, path)


def run_cli_probes(work: Path, fx: dict[str, Path], tally: Tally, log: list[dict]) -> None:
    probes, marker = cli_probes(work, fx)
    marker.unlink(missing_ok=True)
    env = {**os.environ, "KDNAS_CACHE_DIR": str(work / "cache")}

    def one(probe: tuple[str, list, list[Path]]) -> dict:
        name, args, guarded = probe
        before = {str(f): digest(f) for f in guarded}
        siblings = {f.parent: sorted(x.name for x in f.parent.iterdir()) for f in guarded}
        res = subprocess.run(cli(*args), capture_output=True, text=True, timeout=600, env=env, cwd=work)
        after = {str(f): digest(f) for f in guarded}
        err = res.stderr.strip()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        return {"name": name, "code": res.returncode, "stderr": err[-400:], "traceback": "Traceback" in err,
                "clean": res.returncode == 2 and len(lines) >= 1 and lines[-1].startswith("error:")
                         and sum(ln.startswith("error:") for ln in lines) == 1,
                "modified": [f for f in before if before[f] != after[f]]
                            + [f"{d} (new files beside it)" for d, names in siblings.items()
                               if sorted(x.name for x in d.iterdir()) != names and d != work / "inputs"]}

    with ThreadPoolExecutor(2) as pool:
        for result in pool.map(one, probes):
            tally.probes += 1
            log.append(result)
            tally.tracebacks += result["traceback"]
            if result["code"] == 0:
                tally.accepted.append(result["name"])
            elif not result["clean"]:
                tally.unclean.append(f"{result['name']}: exit {result['code']}: {result['stderr'][-200:]}")
            tally.foreign_modified += [f"{result['name']}: {m}" for m in result["modified"]]
            print(f"  {'ok ' if result['clean'] else 'BAD'} {result['name']}: {result['stderr'].splitlines()[-1][:110] if result['stderr'] else ''}",
                  file=sys.stderr)
    tally.code_execution += marker.exists()


# --- server probes ---------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, raw: bytes, timeout: float = 30) -> bytes:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return b""
    with s:  # every request says Connection: close; the write side stays open (uvicorn drops a half-closed client)
        try:
            s.sendall(raw)
        except OSError:
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    return data


def _status(reply: bytes) -> int | None:
    try:
        return int(reply.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def server_requests(rng: random.Random, n: int) -> list[bytes]:
    """Raw HTTP requests: methods, paths, headers and bodies a fuzzer or a broken client sends."""
    texts = ["", " ", "\u0000", "\ud83d", "\udc00 x", "a\u0301" * 300, "\u200b" * 50, "🙂" * 2000, "x" * 5000, "[SEP] [PAD]",
             "\\", "null", "1e999", "<script>", "a\r\nb"]
    out = []
    for _ in range(n):
        kind = rng.randrange(8)
        if kind == 0:
            body = json.dumps({"inputs": [rng.choice(texts) for _ in range(rng.randint(1, 80))]}).encode()
        elif kind == 1:
            body = json.dumps({"inputs": [[rng.choice(texts), rng.choice(texts)] for _ in range(rng.randint(1, 5))]}).encode()
        elif kind == 2:
            body = json.dumps({"inputs": rng.choice([1, 1.5, True, {"a": 1}, [None], [[[]]], [1e400 if False else 1e300]])}).encode()
        elif kind == 3:
            body = b'{"inputs": ["' + bytes(rng.randrange(128, 256) for _ in range(40)) + b'"]}'
        elif kind == 4:
            body = b"{" * rng.randint(1, 100000)
        elif kind == 5:
            body = json.dumps({"inputs": ["fine"], "extra": "x" * rng.randint(0, 100000)}).encode()
        elif kind == 6:
            body = rng.randbytes(rng.randint(0, 3000))
        else:
            body = json.dumps({"inputs": ["a good film"]}).encode()
        method = rng.choice([b"POST", b"POST", b"POST", b"GET", b"PUT", b"DELETE", b"OPTIONS", b"HEAD", b"PATCH"])
        path = rng.choice([b"/v1/predict", b"/v1/predict", b"/v1/predict/", b"//v1/predict", b"/v1/predict?inputs=a",
                           b"/health", b"/v1/metadata", b"/docs", b"/openapi.json", b"/%00", b"/" + b"a" * 5000, b"/\xff"])
        length = rng.choice([str(len(body)).encode(), str(len(body)).encode(), b"-1", b"abc", b"99999999999", b"0",
                             str(len(body)).encode() + b", 5"])
        ctype = rng.choice([b"application/json", b"application/json; charset=latin-1", b"text/plain", b"multipart/form-data",
                            b"application/json" * 50, b""])
        extra = rng.choice([b"", b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n", b"X-" + b"h" * 9000 + b": 1\r\n"])
        if extra.startswith(b"Transfer-Encoding"):
            out.append(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype + b"\r\n" + extra
                       + b"Connection: close\r\n\r\n"
                       + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        else:
            out.append(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                       + length + b"\r\n" + extra + b"Connection: close\r\n\r\n" + body)
    return out


def run_server_probes(work: Path, fx: dict[str, Path], tally: Tally, log: list[dict], n: int) -> None:
    port = _free_port()
    proc = subprocess.Popen(cli("serve", fx["artifact"], "--port", port, "--header-timeout", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _status(_request(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2)):
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.5)
        requests = server_requests(random.Random(20261204), n)
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda raw: _status(_request(port, raw)), requests))
        tally.requests += len(codes)
        tally.server_5xx += sum(1 for c in codes if c is not None and c >= 500)
        log.append({"server_codes": {str(c): codes.count(c) for c in sorted(set(codes), key=str)}})
        # 100 clients that send half their headers and wait: each must be let go within the header timeout
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(100)]
        for s in held:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        time.sleep(2 + 3)
        for s in held:
            s.setblocking(False)
            try:
                open_still = s.recv(1 << 16) != b"" and s.recv(1 << 16) != b""
            except BlockingIOError:
                open_still = True
            except OSError:
                open_still = False
            tally.held_connections += open_still
            s.close()
        # 100 MB chunked upload: answered and cut off early, memory bounded
        rss_before = _rss(proc.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            sent, chunk = 0, b"y" * (1 << 20)
            try:
                while sent < 100 << 20:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except OSError:
                pass
        log.append({"chunked_sent_mb": sent >> 20, "rss_growth_mb": (_rss(proc.pid) - rss_before) >> 20})
        good = _status(_request(port, b'POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                                      b'Content-Length: 25\r\nConnection: close\r\n\r\n{"inputs": ["good film"]}'))
        if good != 200 or proc.poll() is not None:
            tally.server_5xx += 1
            log.append({"after_probes": good, "alive": proc.poll() is None})
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        tally.tracebacks += "Traceback" in err
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-out/probes"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tic = time.time()
    print("building the tiny teacher, student and artifact (first run only)", file=sys.stderr)
    fx = fixtures(work)
    tally, log = Tally(), []
    print("command-line probes", file=sys.stderr)
    run_cli_probes(work, fx, tally, log)
    print(f"server probes ({args.requests} fuzzed requests, 100 half-sent headers, a 100 MB chunked body)", file=sys.stderr)
    run_server_probes(work, fx, tally, log, args.requests)
    summary = {**tally.to_dict(), "wall_s": round(time.time() - tic, 1)}
    (work / "probes.json").write_text(json.dumps({"summary": summary, "log": log}, indent=2, default=str))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{tally.probes} command-line probes: {tally.code_execution} code executions, {tally.tracebacks} tracebacks, "
          f"{len(tally.unclean)} unclean errors, {len(tally.accepted)} bad inputs accepted, "
          f"{len(tally.foreign_modified)} foreign files modified")
    print(f"{tally.requests} fuzzed requests: {tally.server_5xx} answered 5xx; {tally.held_connections} of 100 half-sent "
          f"connections still held; {log[-1] if log and 'chunked_sent_mb' in log[-1] else ''}")
    for line in tally.unclean + [f"accepted: {a}" for a in tally.accepted] + tally.foreign_modified:
        print(f"  {line}")


if __name__ == "__main__":
    main()
