"""`serve --engine ray`: two Ray Serve replicas answer exactly as the single-process server does."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import cli
from test_serve import MALFORMED, MAX_CHARS, MAX_TEXTS, _free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow  # starts a Ray cluster on this machine (about half a minute)


def _start(artifact: Path, *extra: str) -> tuple[str, subprocess.Popen]:
    port = _free_port()
    proc = subprocess.Popen(cli("serve", str(artifact), "--port", str(port), "--max-texts", str(MAX_TEXTS),
                                "--max-chars", str(MAX_CHARS), "--max-batch", "16", "--max-wait-ms", "10", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return f"http://127.0.0.1:{port}", proc


def _replicas_seen(url: str, proc: subprocess.Popen, want: int, timeout: float) -> set[str]:
    """Polls /health until `want` distinct replicas have answered (each replica starts on its own)."""
    seen: set[str] = set()
    deadline = time.time() + timeout
    while time.time() < deadline and len(seen) < want:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            r = httpx.get(url + "/health", timeout=2)
            if r.status_code == 200:
                seen.add(r.json().get("replica", ""))
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return seen


def _answers(url: str, good: list[dict]) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]]:
    """The 20 good requests, 8 at a time (so they are batched together), then the 20 malformed ones."""
    with httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(8) as pool:
            good_answers = list(pool.map(lambda body: client.post("/v1/predict", json=body), good))
        bad = []
        for _name, body, headers, _status in MALFORMED[:18]:
            if isinstance(body, bytes):
                bad.append(client.post("/v1/predict", content=body, headers=headers))
            else:
                bad.append(client.post("/v1/predict", json=body))
        bad += [client.get("/v1/predict"), client.post("/v1/nothing", json={})]
    return [(r.status_code, r.json()) for r in good_answers], [(r.status_code, r.json()) for r in bad]


def test_ray_replicas_answer_as_serve_does(static_artifact: Path, sst2_slice: Path) -> None:
    texts = [line.split("\t")[0] for line in (sst2_slice / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:61]]
    good = [{"inputs": texts[i:i + 1 + i % 5]} for i in range(20)]  # 1 to 5 texts each
    assert len(good) == 20 and len(MALFORMED[:18]) + 2 == 20
    single_url, single = _start(static_artifact)
    ray_url, ray = _start(static_artifact, "--engine", "ray", "--replicas", "2")
    try:
        assert _replicas_seen(single_url, single, 1, 90) == {""}  # one process: no replica id
        replicas = _replicas_seen(ray_url, ray, 2, 240)
        assert len(replicas) == 2, f"replicas that answered: {replicas}"
        expected_good, expected_bad = _answers(single_url, good)
        got_good, got_bad = _answers(ray_url, good)
        # One process serves /metrics; a Ray replica would count only its share, so Ray's own metrics stand in.
        metrics = (httpx.get(single_url + "/metrics", timeout=30), httpx.get(ray_url + "/metrics", timeout=30))
    finally:
        for proc in (single, ray):
            proc.terminate()
        for proc in (single, ray):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert [s for s, _ in expected_good] == [s for s, _ in got_good] == [200] * 20
    for (_, want), (_, got) in zip(expected_good, got_good):
        assert got["model"] == want["model"]
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
        # Static int8: the same answer whichever batch-mates each server gave a request.
        assert [p["score"] for p in got["predictions"]] == pytest.approx([p["score"] for p in want["predictions"]], abs=1e-5)
    assert [s for s, _ in got_bad] == [s for s, _ in expected_bad]
    assert all(s >= 400 for s, _ in got_bad)
    assert got_bad == expected_bad  # the same error bodies, word for word
    assert [r.status_code for r in metrics] == [200, 404]
