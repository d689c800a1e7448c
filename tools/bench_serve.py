"""How fast is the shipped artifact, alone and behind `kdnas-deploy serve`?

1. Serving: `kdnas-deploy serve ARTIFACT` on 127.0.0.1, driven by this process as one asyncio load generator
   (plain asyncio streams, kept-alive connections, one text per request) at concurrency 1, 8 and 32 with a bounded number of requests each: throughput,
   p50/p99 latency, and the load generator's own CPU share (it competes for the same cores). Against it, the
   same work without HTTP: tokenizer + the raw ONNX Runtime session on micro-batches of the size the server
   formed at that concurrency. Target: the server at concurrency 32 reaches at least 80% of that.
2. Artifact against PyTorch: the profile graph (cpu-int8, and cpu fp32) against the same model in PyTorch eager
   fp32 at batch 1, sequence 128, for students of hidden size 256 and more, measured interleaved, rounds
   repeated, medians with their spread. Target: int8 at least 2x faster.

    python tools/bench_serve.py --artifact ship/sst2-int8 --out bench-out/serve
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

CONCURRENCY = (1, 8, 32)
SHAPES = ("L3-H384-A12-I1536", "L4-H256-A4-I1024", "L6-H384-A12-I1536", "L4-H512-A8-I2048")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _texts(n: int) -> list[str]:
    from kdnas_deploy.util.paths import glue_dir

    rows = (glue_dir() / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = [r.split("\t")[0] for r in rows]
    return [texts[i % len(texts)] for i in range(n)]


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bytes:
    """One POST /v1/predict over a kept-alive connection; the response body."""
    writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    data = await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"server answered {status.decode()}: {data[:200]!r}")
    return data


async def _load(port: int, texts: list[str], concurrency: int) -> tuple[list[float], float, float]:
    """`concurrency` clients on kept-alive connections, one text per request, until `texts` is used up.

    Plain asyncio streams rather than an HTTP client library: on 2 cores the load generator's own CPU is taken from
    the server, and httpx spent about 5 ms of CPU per request here (a third of the machine at concurrency 32),
    which throttled the server and left its micro-batches nearly empty. This client spends about 0.1 ms."""
    queue = [json.dumps({"inputs": [t]}).encode() for t in texts]
    queue.reverse()
    latencies: list[float] = []
    expected = len(queue)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                answer = await _post(reader, writer, body)
                latencies.append(time.perf_counter() - t0)
                if b'"predictions"' not in answer:
                    raise RuntimeError(f"unexpected answer {answer[:200]!r}")
        finally:
            writer.close()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert len(latencies) == expected
    return latencies, wall, cpu


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        return json.loads(r.read())


def bench_server(artifact: Path, requests: dict[int, int], max_batch: int, max_wait_ms: float, extra: list[str],
                 repeats: int) -> dict:
    from kdnas_deploy.artifact.runtime import Artifact

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdnas_deploy.cli", "serve", str(artifact), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            try:
                _health(port)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        asyncio.run(_load(port, _texts(64), 8))  # warm-up: sessions, connection pools, allocator
        art = Artifact(artifact)  # the baseline's session: same file, same profile settings
        rows = {}
        for c in CONCURRENCY:
            texts = _texts(requests[c])
            runs = []
            for _ in range(repeats):  # server and baseline alternate, so slow spells hit both
                before = _health(port)
                lat, wall, cpu = asyncio.run(_load(port, texts, c))
                after = _health(port)
                mean_batch = (after["rows"] - before["rows"]) / max(after["batches"] - before["batches"], 1)
                # The same texts through tokenizer + session, in batches of the size the server formed.
                size = max(1, round(mean_batch))
                t0 = time.perf_counter()
                for start in range(0, len(texts), size):
                    art.logits(texts[start:start + size])
                raw_wall = time.perf_counter() - t0
                runs.append({"throughput_rps": len(texts) / wall, "raw_throughput_rps": len(texts) / raw_wall,
                             "ratio": raw_wall / wall, "mean_batch": mean_batch, "latencies_ms": np.array(lat) * 1e3,
                             "loadgen_cpu_share": cpu / wall / (os.cpu_count() or 1)})
            median_run = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]  # the median run, reported whole
            ratios = [r["ratio"] for r in runs]
            rows[c] = {"requests": len(texts), "repeats": repeats,
                       "throughput_rps": float(np.median([r["throughput_rps"] for r in runs])),
                       "p50_ms": float(np.percentile(median_run["latencies_ms"], 50)),
                       "p99_ms": float(np.percentile(median_run["latencies_ms"], 99)),
                       "mean_batch": float(np.median([r["mean_batch"] for r in runs])),
                       "loadgen_cpu_share": float(np.median([r["loadgen_cpu_share"] for r in runs])),
                       "raw_throughput_rps": float(np.median([r["raw_throughput_rps"] for r in runs])),
                       "server_over_raw": float(np.median(ratios)),
                       "server_over_raw_range": [float(min(ratios)), float(max(ratios))]}
            r = rows[c]
            print(f"concurrency {c}: {r['throughput_rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"mean batch {r['mean_batch']:.1f}; raw session {r['raw_throughput_rps']:.0f} rows/s; server/raw "
                  f"{r['server_over_raw']:.0%} (range {min(ratios):.0%}-{max(ratios):.0%}); load generator "
                  f"{r['loadgen_cpu_share']:.0%} of the CPUs", flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_vs_pytorch(rounds: int, seq: int = 128) -> dict:
    import torch

    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.graph import build_profile_graph, random_model
    from kdnas_deploy.latency.timing import make_session, dummy_feeds
    from kdnas_deploy.space import StudentArch

    torch.set_num_threads(os.cpu_count() or 1)
    profiles = {name: load_profile(name) for name in ("cpu-int8", "cpu")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {}
        for shape in SHAPES:
            arch = StudentArch.parse(shape)
            eager_attn = random_model(arch)
            model = random_model(arch)
            model.config._attn_implementation = "sdpa"  # what a PyTorch user runs by default
            for name, prof in profiles.items():
                graph = build_profile_graph(eager_attn, prof, Path(tmp) / f"{shape}-{name}")
                sess = make_session(graph.path, prof)
                feeds = dummy_feeds(sess, 1, seq)
                contenders[(shape, name)] = (lambda s=sess, f=feeds: s.run(["logits"], f))
            ids = torch.from_numpy(dummy_feeds(sess, 1, seq)["input_ids"])

            def run_torch(m=model, x=ids) -> None:
                with torch.inference_mode():
                    m(input_ids=x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x))

            contenders[(shape, "pytorch")] = run_torch
        samples: dict = {k: [] for k in contenders}
        for r in range(rounds):  # interleaved: every contender once per round, order rotated
            keys = list(contenders)
            keys = keys[r % len(keys):] + keys[:r % len(keys)]
            for k in keys:
                fn = contenders[k]
                for _ in range(3):
                    fn()
                times = []
                for _ in range(15):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                samples[k].append(float(np.median(times)) * 1e3)
        for shape in SHAPES:
            row = {}
            for name in ("pytorch", "cpu", "cpu-int8"):
                v = np.array(samples[(shape, name)])
                row[name] = {"median_ms": float(np.median(v)), "iqr_ms": float(np.percentile(v, 75) - np.percentile(v, 25))}
            row["int8_speedup"] = row["pytorch"]["median_ms"] / row["cpu-int8"]["median_ms"]
            row["fp32_onnx_speedup"] = row["pytorch"]["median_ms"] / row["cpu"]["median_ms"]
            results[shape] = row
            print(f"{shape}: PyTorch {row['pytorch']['median_ms']:.2f} ms, ONNX fp32 {row['cpu']['median_ms']:.2f} ms, "
                  f"int8 {row['cpu-int8']['median_ms']:.2f} ms -> int8 {row['int8_speedup']:.2f}x", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="an exported artifact folder")
    parser.add_argument("--out", type=Path, default=Path("bench-out/serve"))
    parser.add_argument("--requests", type=int, nargs=3, default=[200, 600, 1200], help="requests at concurrency 1, 8, 32")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the PyTorch comparison")
    parser.add_argument("--repeats", type=int, default=3, help="server/baseline alternations per concurrency")
    parser.add_argument("--server-args", default="", help="extra serve flags, e.g. '--threads 1 --spinning'")
    parser.add_argument("--no-pytorch", action="store_true", help="serving part only")
    args = parser.parse_args()
    tic = time.time()
    card = json.loads((args.artifact / "kdnas_card.json").read_text())
    serving = bench_server(args.artifact, dict(zip(CONCURRENCY, args.requests)), args.max_batch, args.max_wait_ms,
                           args.server_args.split(), args.repeats)
    versus = {} if args.no_pytorch else bench_vs_pytorch(args.rounds)
    result = {"artifact": str(args.artifact), "arch": card["arch"], "profile": card["profile"]["name"],
              "cpus": os.cpu_count(), "serving": serving, "vs_pytorch": versus, "wall_s": round(time.time() - tic, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Artifact {card['arch']} ({card['profile']['name']}); {os.cpu_count()} CPUs; one text per request.", "",
             "| concurrency | requests x repeats | req/s | p50 ms | p99 ms | mean micro-batch | raw session rows/s | server / raw (range) | load generator CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c, r in serving.items():
        lo, hi = r["server_over_raw_range"]
        lines.append(f"| {c} | {r['requests']} x {r['repeats']} | {r['throughput_rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['mean_batch']:.1f} | {r['raw_throughput_rps']:.0f} | {r['server_over_raw']:.0%} ({lo:.0%}-{hi:.0%}) | "
                     f"{r['loadgen_cpu_share']:.0%} |")
    lines += ["", f"Batch 1, sequence 128, {args.rounds} interleaved rounds (median, IQR):", "",
              "| student | PyTorch eager fp32 (sdpa) | ONNX fp32 (cpu) | ONNX int8 (cpu-int8) | int8 speedup |", "|---|---|---|---|---|"]
    for shape, r in versus.items():
        lines.append(f"| {shape} | {r['pytorch']['median_ms']:.2f} ({r['pytorch']['iqr_ms']:.2f}) | {r['cpu']['median_ms']:.2f} "
                     f"({r['cpu']['iqr_ms']:.2f}) | {r['cpu-int8']['median_ms']:.2f} ({r['cpu-int8']['iqr_ms']:.2f}) | "
                     f"{r['int8_speedup']:.2f}x |")
    (args.out / "bench_serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
