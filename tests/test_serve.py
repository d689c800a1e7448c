"""A real `kdnas-deploy serve` process on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import cli
from test_artifact import SENTENCES

httpx = pytest.importorskip("httpx")

MAX_TEXTS, MAX_CHARS = 8, 300
HEADER_TIMEOUT = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(fp32_artifact: Path):
    """The fp32 artifact: its outputs do not depend on how requests are batched, so answers compare exactly."""
    port = _free_port()
    proc = subprocess.Popen(cli("serve", str(fp32_artifact), "--port", str(port), "--max-texts", str(MAX_TEXTS),
                                "--max-chars", str(MAX_CHARS), "--max-batch", "16", "--max-wait-ms", "10",
                                "--header-timeout", str(HEADER_TIMEOUT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not come up in 90 s")
    yield url, proc
    if proc.poll() is None:
        proc.kill()


def test_answers_equal_direct_onnx_runtime(server, fp32_artifact: Path) -> None:
    from kdnas_deploy.artifact.runtime import Artifact

    url, _ = server
    expected = Artifact(fp32_artifact).predict(SENTENCES)
    r = httpx.post(url + "/v1/predict", json={"inputs": SENTENCES})
    assert r.status_code == 200
    got = r.json()["predictions"]
    assert [g["label"] for g in got] == [e.label for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e.score for e in expected], abs=1e-5)
    assert all(set(g["scores"]) == {"negative", "positive"} for g in got)
    meta = httpx.get(url + "/v1/metadata").json()
    assert meta["arch"] == json.loads((fp32_artifact / "kdnas_card.json").read_text())["arch"]
    assert meta["serving"]["max_texts"] == MAX_TEXTS
    from kdnas_deploy.instruction_set import host_instruction_set

    # exported here, served here: the same instruction set, nothing to say
    assert meta["runtime_cpu"]["instruction_set"] == host_instruction_set().summary
    assert meta["runtime_cpu"]["matches_card"] is True and meta["runtime_cpu"]["note"] is None
    assert httpx.get(url + "/docs").status_code == 200
    assert "/v1/predict" in httpx.get(url + "/openapi.json").json()["paths"]


def _scrape(client) -> dict[tuple[str, tuple], float]:
    """The server's /metrics, read by prometheus_client's own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_answers_by_status_time_them_and_size_batches(server, fp32_artifact: Path) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as client:
        before = _scrape(client)
        for texts in (["one"], ["two"], ["three", "four", "five"]):
            assert client.post("/v1/predict", json={"inputs": texts}).status_code == 200
        assert client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
        assert client.post("/v1/predict", json={"inputs": ["ok"] * (MAX_TEXTS + 1)}).status_code == 413
        assert client.post("/v1/predict", json={"inputs": ["y" * 200_000]}).status_code == 413  # refused unread
        after = _scrape(client)
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("kdnas_requests_total", status="200") == 3
    assert delta("kdnas_requests_total", status="422") == 1
    assert delta("kdnas_requests_total", status="413") == 2
    assert delta("kdnas_request_seconds_count") == 4  # the handler's answers: not those refused before it
    assert delta("kdnas_batch_rows_sum") == 5  # every row of every answered request went through one pass
    assert delta("kdnas_batch_seconds_sum") > 0
    assert after[("kdnas_queue_requests", ())] == 0
    card = json.loads((fp32_artifact / "kdnas_card.json").read_text())
    info = [labels for (name, labels), value in after.items() if name == "kdnas_model_info" and value == 1]
    assert len(info) == 1 and dict(info[0])["arch"] == card["arch"] and dict(info[0])["precision"] == "fp32"


MALFORMED = [
    ("not json", b"{not json", {"content-type": "application/json"}, 422),
    ("empty body", b"", {"content-type": "application/json"}, 422),
    ("invalid utf-8", b'{"inputs": ["\xff\xfe"]}', {"content-type": "application/json"}, 400),
    ("top-level list", b"[]", {"content-type": "application/json"}, 422),
    ("null", b"null", {"content-type": "application/json"}, 422),
    ("inputs is a string", {"inputs": "a text"}, None, 422),
    ("inputs is a number", {"inputs": 5}, None, 422),
    ("inputs missing", {"texts": ["a"]}, None, 422),
    ("no inputs", {"inputs": []}, None, 422),
    ("number row", {"inputs": [5]}, None, 422),
    ("null row", {"inputs": [None]}, None, 422),
    ("boolean row", {"inputs": [True]}, None, 422),
    ("object row", {"inputs": [{"text": "a"}]}, None, 422),
    ("pair for a single-text model", {"inputs": [["a", "b"]]}, None, 422),
    ("one-element list", {"inputs": [["a"]]}, None, 422),
    ("three-element list", {"inputs": [["a", "b", "c"]]}, None, 422),
    ("nested list", {"inputs": [[["a"]]]}, None, 422),
    ("empty text", {"inputs": [""]}, None, 422),
    ("blank text", {"inputs": ["   "]}, None, 422),
    ("too many texts", {"inputs": ["ok"] * (MAX_TEXTS + 1)}, None, 413),
    ("text too long", {"inputs": ["x" * (MAX_CHARS + 1)]}, None, 413),
    ("body too large", {"inputs": ["y" * 200_000]}, None, 413),
    ("form encoded", b"inputs=a", {"content-type": "application/x-www-form-urlencoded"}, 422),
]


def test_malformed_requests_get_a_json_4xx_and_the_server_lives_on(server) -> None:
    url, proc = server
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, body, headers, status in MALFORMED:
            if isinstance(body, bytes):
                r = client.post("/v1/predict", content=body, headers=headers)
            else:
                r = client.post("/v1/predict", json=body)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert isinstance(r.json().get("error"), str), (name, r.text)
        for r, status in ((client.get("/v1/predict"), 405), (client.post("/v1/nothing", json={}), 404)):
            assert r.status_code == status and isinstance(r.json()["error"], str)
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/v1/predict", json={"inputs": ["still answering"]}).status_code == 200
    assert proc.poll() is None


def test_200_requests_from_16_concurrent_clients(server, fp32_artifact: Path, sst2_slice: Path) -> None:
    from kdnas_deploy.artifact.runtime import Artifact

    url, _ = server
    dev = [line.split("\t")[0] for line in (sst2_slice / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:41]]
    truth = {t: p for t, p in zip(dev, Artifact(fp32_artifact).predict(dev))}
    rng = random.Random(0)
    requests = [rng.sample(dev, rng.randint(1, 4)) for _ in range(200)]

    def send(texts: list[str]) -> tuple[list[str], dict]:
        with httpx.Client(timeout=60) as c:
            r = c.post(url + "/v1/predict", json={"inputs": texts})
            return texts, {"status": r.status_code, **r.json()}

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, requests))
    assert len(answers) == 200
    for texts, answer in answers:
        assert answer["status"] == 200, answer
        assert [p["label"] for p in answer["predictions"]] == [truth[t].label for t in texts]
        assert [p["score"] for p in answer["predictions"]] == pytest.approx([truth[t].score for t in texts], abs=1e-5)
    health = httpx.get(url + "/health").json()
    assert health["batches"] < health["rows"]  # concurrent requests really were grouped into shared batches


def _wait_until_up(port: int, seconds: float = 90) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.3)
    return False


def test_sigterm_shuts_down_cleanly(fp32_artifact: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(cli("serve", str(fp32_artifact), "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_up(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_predict_and_serve_say_in_one_line_when_this_cpu_is_not_the_cards(fp32_artifact: Path, tmp_path: Path) -> None:
    """An artifact whose card was measured on another instruction set: `predict` and `serve` each say so in one
    line, and /v1/metadata carries it; the answers are given all the same."""
    import shutil

    from conftest import other_cpu_features
    from kdnas_deploy.instruction_set import InstructionSet, host_instruction_set

    moved = tmp_path / "moved"
    shutil.copytree(fp32_artifact, moved)
    card = json.loads((moved / "kdnas_card.json").read_text())
    card["fingerprint"]["cpu_features"] = other_cpu_features()
    (moved / "kdnas_card.json").write_text(json.dumps(card))
    there = InstructionSet.of(card["fingerprint"]["machine"], other_cpu_features())
    same_tier = there.summary == host_instruction_set().summary  # then the note lists the features, not the tier
    expected = f"latency and scores on the card were measured on {there.describe() if same_tier else there.summary}"

    r = subprocess.run(cli("predict", str(moved), SENTENCES[0], "--json"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["label"] in ("negative", "positive")
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and expected in notes[0], r.stderr
    r = subprocess.run(cli("predict", str(fp32_artifact), SENTENCES[0]), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "note:" not in r.stderr

    port = _free_port()
    proc = subprocess.Popen(cli("serve", str(moved), "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_until_up(port), "server did not come up in 90 s"
        meta = httpx.get(f"http://127.0.0.1:{port}/v1/metadata", timeout=5).json()
        assert meta["runtime_cpu"]["matches_card"] is False and expected in meta["runtime_cpu"]["note"]
        assert meta["runtime_cpu"]["card_scores_instruction_set"] == there.summary
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert sum("note:" in line for line in err.splitlines()) == 1 and expected in " ".join(err.split()), err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_bad_settings(fp32_artifact: Path, tmp_path: Path) -> None:
    r = subprocess.run(cli("serve", str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not an exported artifact" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cli("serve", str(fp32_artifact), "--max-batch", "0"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = subprocess.run(cli("serve", str(fp32_artifact), "--engine", "gunicorn"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "'gunicorn' is not one of 'uvicorn', 'ray'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_micro_batcher_groups_waiting_requests(fp32_artifact: Path) -> None:
    """In-process: 10 one-text requests at once, batches of at most 4, a generous wait: 4 + 4 + 2 rows."""
    import asyncio

    from kdnas_deploy.artifact.runtime import Artifact
    from kdnas_deploy.artifact.serve import MicroBatcher, ServeConfig

    art = Artifact(fp32_artifact)
    texts = (SENTENCES * 3)[:10]
    expected = [art.predict([t])[0] for t in texts]

    async def main():
        batcher = MicroBatcher(art, ServeConfig(max_batch=4, max_wait_ms=200))
        batcher.start()
        try:
            answers = await asyncio.gather(*(batcher.submit([t]) for t in texts))
        finally:
            await batcher.stop()
        return answers, batcher.batches, batcher.rows

    answers, batches, rows = asyncio.run(main())
    assert (batches, rows) == (3, 10)
    assert [a[0].label for a in answers] == [e.label for e in expected]
    assert [a[0].score for a in answers] == pytest.approx([e.score for e in expected], abs=1e-5)


def test_batcher_waits_for_company_only_under_load(fp32_artifact: Path) -> None:
    """An idle server runs a lone request at once; after a multi-row batch it waits up to max_wait_ms to fill one."""
    import asyncio

    from kdnas_deploy.artifact.runtime import Artifact
    from kdnas_deploy.artifact.serve import MicroBatcher, ServeConfig

    art = Artifact(fp32_artifact)

    async def main():
        batcher = MicroBatcher(art, ServeConfig(max_batch=8, max_wait_ms=3000))
        batcher.start()
        try:
            tic = time.perf_counter()
            await batcher.submit([SENTENCES[0]])
            alone = time.perf_counter() - tic
            await asyncio.gather(*(batcher.submit([t]) for t in SENTENCES[:3]))  # a batch of 3: under load now
            before = batcher.batches

            async def late():
                await asyncio.sleep(0.3)
                return await batcher.submit([SENTENCES[2]])

            await asyncio.gather(batcher.submit([SENTENCES[1]]), late())
            return alone, batcher.batches - before
        finally:
            await batcher.stop()

    alone, batches = asyncio.run(main())
    assert alone < 2.0  # did not sit out the 3 s wait
    assert batches == 1  # the request 0.3 s later joined the waiting one


# --- hostile clients ----------------------------------------------------------------------------------------------

LONE_SURROGATE = "bad \ud800 text"


def test_a_text_the_tokenizer_rejects_is_422_and_never_reaches_its_batch_mates(server, fp32_artifact: Path) -> None:
    from kdnas_deploy.artifact.runtime import Artifact

    url, proc = server
    truth = {t: p.label for t, p in zip(SENTENCES, Artifact(fp32_artifact).predict(SENTENCES))}
    body = json.dumps({"inputs": [LONE_SURROGATE]})  # json.dumps writes the lone surrogate as the escape \ud800
    r = httpx.post(url + "/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "surrogate" in r.json()["error"]

    def send(k: int) -> tuple[int, list[str], int]:
        texts = [SENTENCES[k % len(SENTENCES)]] if k % 3 else [SENTENCES[0], LONE_SURROGATE]
        with httpx.Client(timeout=60) as c:
            r = c.post(url + "/v1/predict", content=json.dumps({"inputs": texts}), headers={"content-type": "application/json"})
            return k, texts, r.status_code, r.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(150)))
    for k, texts, status, answer in answers:
        if k % 3:
            assert status == 200 and [p["label"] for p in answer["predictions"]] == [truth[t] for t in texts], answer
        else:
            assert status == 422 and isinstance(answer["error"], str)
    assert proc.poll() is None


def test_one_failing_request_fails_alone_in_the_batcher(fp32_artifact: Path) -> None:
    """A failure the checks did not foresee (here: a row the model raises on) fails its own request only; the requests
    batched with it are answered as if it had never come."""
    import asyncio

    from kdnas_deploy.artifact.runtime import Artifact
    from kdnas_deploy.artifact.serve import MicroBatcher, ServeConfig

    art = Artifact(fp32_artifact)

    class Brittle:
        def predict(self, rows):
            if "boom" in rows:
                raise RuntimeError("the model failed on this row")
            return art.predict(rows)

    async def main():
        batcher = MicroBatcher(Brittle(), ServeConfig(max_batch=8, max_wait_ms=100))
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit([t]) for t in SENTENCES[:3]))  # under load: the next ones batch
            return await asyncio.gather(*(batcher.submit([t]) for t in [SENTENCES[0], "boom", SENTENCES[1]]),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    first, failed, last = asyncio.run(main())
    assert isinstance(failed, RuntimeError)
    assert first[0].label == art.predict([SENTENCES[0]])[0].label and last[0].label == art.predict([SENTENCES[1]])[0].label


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(server) -> None:
    url, proc = server
    from kdnas_deploy.artifact.serve import ServeConfig

    limit = ServeConfig(max_texts=MAX_TEXTS, max_chars=MAX_CHARS).max_body_bytes
    cap = 64 * 2**20
    with _raw(url) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < cap:  # far more than the limit: the server must answer, and hang up, long before the end
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = _read_all(sock)
        except ConnectionResetError:
            reply = b""
    assert sent < cap  # the server closed the connection: the client could not send it all
    assert reply == b"" or (reply.startswith(b"HTTP/1.1 413") and b'"error"' in reply), reply[:200]
    with _raw(url) as sock:  # a smaller over-limit body, sent whole: the 413 is read back
        body = b"x" * (limit + 1000)
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                     % (len(body), body))
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 413") and b'"error"' in reply, reply[:200]
    assert httpx.get(url + "/health").status_code == 200 and proc.poll() is None


def test_a_client_that_sends_half_its_headers_is_cut_off(server) -> None:
    url, _ = server
    socks = [_raw(url) for _ in range(20)]
    tic = time.monotonic()
    for sock in socks:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-")
    replies = [_read_all(sock) for sock in socks]  # returns when the server closes the connection
    waited = time.monotonic() - tic
    for sock in socks:
        sock.close()
    assert all(r.startswith(b"HTTP/1.1 408") for r in replies), replies[0][:100]
    assert waited < HEADER_TIMEOUT + 5
    with _raw(url) as sock:  # headers sent, body withheld: cut off too (after 3x the header timeout)
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        tic = time.monotonic()
        _read_all(sock)
        assert time.monotonic() - tic < 3 * HEADER_TIMEOUT + 5
    assert httpx.get(url + "/health").status_code == 200


def test_metadata_names_no_local_path(server, fp32_artifact: Path) -> None:
    url, _ = server
    card = json.loads((fp32_artifact / "kdnas_card.json").read_text())
    assert str(fp32_artifact.parent.parent) in json.dumps(card)  # the card on disk does name local folders
    meta = httpx.get(url + "/v1/metadata").text
    assert "/tmp" not in meta and str(Path.home()) not in meta and '"/' not in meta
    assert json.loads(meta)["arch"] == card["arch"]


def _fuzz_bodies(rng: random.Random, n: int) -> list[tuple[str, bytes, dict]]:
    atoms = ["", " ", "a", "\ud800", "\udfff", "\x00", "\u202e", "\U0001F600", "é" * 400, "[CLS]", "x" * (MAX_CHARS + 1),
             "\\", '"', "\n\t"]
    values = [None, True, 0, -1, 1e308, [], {}, "text", ["a", "b"], ["a"], [["a"]], {"text": "a"}]
    out = []
    for _ in range(n):
        kind = rng.randrange(6)
        if kind == 0:  # valid shape, hostile texts
            texts = ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, MAX_TEXTS + 2))]
            body = json.dumps({"inputs": texts}).encode()
        elif kind == 1:  # wrong types
            body = json.dumps({"inputs": [rng.choice(values) for _ in range(rng.randint(0, 3))]}).encode()
        elif kind == 2:  # other keys, other documents
            body = json.dumps(rng.choice([{"input": ["a"]}, [], "inputs", 5, None, {"inputs": "a"}, {"inputs": None}])).encode()
        elif kind == 3:  # broken bytes
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        elif kind == 4:  # deep nesting
            depth = rng.randint(100, 5000)
            body = ('{"inputs": ' + "[" * depth + "]" * depth + "}").encode()
        else:  # valid JSON with invalid UTF-8 inside a string
            body = b'{"inputs": ["caf\xe9 \xff"]}'
        headers = {"content-type": rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded", ""])}
        out.append((rng.choice(["/v1/predict", "/v1/predict", "/v1/predict?x=1", "/v1/metadata", "/%ff", "/health"]), body, headers))
    return out


def test_fuzzed_requests_never_get_a_5xx(server) -> None:
    url, proc = server
    cases = _fuzz_bodies(random.Random(1), 300)

    def send(case: tuple[str, bytes, dict]) -> int:
        path, body, headers = case
        with httpx.Client(timeout=60) as c:
            return c.post(url + path, content=body, headers=headers).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, cases))
    assert [c for c in codes if c >= 500] == []
    assert proc.poll() is None and httpx.get(url + "/health").status_code == 200


def test_ray_replicas_share_this_processs_cpu_budget_not_the_hosts_cores(monkeypatch) -> None:
    """A 2-CPU container on a 64-core node: two replicas get one ONNX Runtime thread each, not 32."""
    import os

    from kdnas_deploy.artifact import ray_serve

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(ray_serve, "cpu_budget", lambda: 2)
    assert ray_serve.replica_threads(2) == 1 and ray_serve.replica_threads(1) == 2
    assert ray_serve.replica_threads(2, threads=3) == 3  # --threads still overrides
