"""How fast is the shipped artifact, alone and behind `kdnas-deploy serve`?

1. Serving: `kdnas-deploy serve ARTIFACT` on 127.0.0.1, driven by this process as one asyncio load generator
   (plain asyncio streams, kept-alive connections, one text per request) at concurrency 1, 8 and 32 with a bounded number of requests each: throughput,
   p50/p99 latency, and the load generator's own CPU share (it competes for the same cores). Against it, the
   same work without HTTP: tokenizer + the raw ONNX Runtime session on micro-batches of the size the server
   formed at that concurrency. Target: the server at concurrency 32 reaches at least 80% of that.
2. Artifact against PyTorch: the profile graph (cpu-int8, and cpu fp32) against the same model in PyTorch eager
   fp32 at batch 1, sequence 128, for students of hidden size 256 and more, measured interleaved, rounds
   repeated, medians with their spread. Target: int8 at least 2x faster.

3. Static against dynamic int8 (`--int8 MODEL_DIR...`, model folders with kdnas.json): each model built for
   `cpu-int8` (dynamic: activation scales per batch) and `cpu-int8-static` (calibrated scales) by the export's own function,
   then per graph: the dev score (length-sorted batches of 64, as the card scores it), the share of dev predictions
   that change when the same rows are served in shuffled batches of 7 instead, the file size, and the latency
   ratio static/dynamic by `kdnas-deploy compare`'s paired sessions (geometric mean, one-sided 95% bound).

    python tools/bench_serve.py --artifact ship/sst2-int8 --out bench-out/serve
    python tools/bench_serve.py --int8 runs/teacher runs/students/L4-H256-A8-I1024 --out bench-out/int8

4. `--metrics-cost`: what `GET /metrics` adds, as microseconds of counting per answer and per pass (no server).
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
from collections.abc import Callable
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


def bench_int8(models: list[Path], sessions: int, rounds: int, work: Path) -> dict:
    """Dynamic and static int8 of the same models: dev score, prediction changes between batchings, size, latency."""
    from kdnas_deploy.artifact.export import CALIBRATION_SEED
    from kdnas_deploy.artifact.runtime import onnx_logits
    from kdnas_deploy.data.prepare import prepare, source_from_teacher
    from kdnas_deploy.data.sources import DataSource
    from kdnas_deploy.data.tasks import compute_metrics
    from kdnas_deploy.distill.evaluation import evaluate_model
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.compare import compare_graphs
    from kdnas_deploy.latency.graph import build_profile_graph
    from kdnas_deploy.latency.quantization import row_batches
    from kdnas_deploy.latency.timing import make_session
    from kdnas_deploy.model_folder import load_classifier, read_info
    from kdnas_deploy.space import StudentArch

    profiles = {"dynamic": load_profile("cpu-int8"), "static": load_profile("cpu-int8-static")}
    results = {}
    for folder in models:
        model = load_classifier(str(folder), attn_implementation="eager")
        info = read_info(folder)
        prepared = prepare(str(folder), source_from_teacher(str(folder), DataSource()), info.max_length if info else 128)
        dev, pad, task = prepared.encoded.dev, prepared.encoded.pad_token_id, prepared.task
        labels = np.asarray(dev["labels"])
        arch = str(StudentArch.from_config(model.config))
        row = {"task": task.name, "dev_rows": len(dev),
               "pytorch_score": 100 * evaluate_model(model, dev, task, 64, pad)["score"]}
        graphs = {}
        for kind, prof in profiles.items():
            calibration = (row_batches(prepared.encoded.train, prof.model.calibration_rows, seed=CALIBRATION_SEED)
                           if kind == "static" else None)
            graph = build_profile_graph(model, prof, work / arch / kind, calibration=calibration)
            graphs[kind] = graph.path
            session = make_session(graph.path, prof)
            sorted_logits = onnx_logits(session, dev, 64, pad)
            shuffled = onnx_logits(session, dev, 7, pad, order=np.random.default_rng(1).permutation(len(dev)))
            row[kind] = {"score": 100 * compute_metrics(task, sorted_logits, labels)["score"],
                         "score_shuffled7": 100 * compute_metrics(task, shuffled, labels)["score"],
                         "changed_share": float((sorted_logits.argmax(-1) != shuffled.argmax(-1)).mean()),
                         "size_mb": graph.path.stat().st_size / 1e6}
            print(f"{arch} {kind}: dev {row[kind]['score']:.2f} (shuffled batches of 7: {row[kind]['score_shuffled7']:.2f}), "
                  f"{row[kind]['changed_share']:.2%} of predictions change, {row[kind]['size_mb']:.2f} MB", flush=True)
        comparison = compare_graphs(graphs["static"], graphs["dynamic"], profiles["dynamic"], sessions=sessions,
                                    rounds=rounds, labels=("static", "dynamic"))
        centre, low, high = comparison.bounds()
        row["latency_ratio"] = {"static_over_dynamic": centre, "upper95": high, "sessions": comparison.ratios}
        print(f"{arch}: static/dynamic latency {centre:.3f} (one-sided 95% bound {high:.3f}, sessions "
              + ", ".join(f"{r:.3f}" for r in comparison.ratios) + ")", flush=True)
        results[f"{arch} ({task.name})"] = row
    return results


def int8_table(results: dict) -> list[str]:
    lines = ["| model | PyTorch dev | dynamic dev | static dev | predictions changed by batching (dynamic / static) | "
             "size MB (dynamic / static) | latency static / dynamic (95% bound) |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        d, s, lat = r["dynamic"], r["static"], r["latency_ratio"]
        lines.append(f"| {name} | {r['pytorch_score']:.2f} | {d['score']:.2f} | {s['score']:.2f} | "
                     f"{d['changed_share']:.2%} / {s['changed_share']:.2%} | {d['size_mb']:.2f} / {s['size_mb']:.2f} | "
                     f"{lat['static_over_dynamic']:.3f} ({lat['upper95']:.3f}) |")
    return lines


def metrics_cost(calls: int = 100_000, trials: int = 5) -> dict[str, list[float]]:
    """What `/metrics` adds: microseconds of counting per answer and per ONNX Runtime pass, milliseconds per scrape,
    each over `calls` calls (scrapes: calls / 500), `trials` times. A bound to set beside a request's milliseconds,
    not a serving measurement: no server, no HTTP."""
    from kdnas_deploy.artifact.metrics import ServeMetrics

    meter = ServeMetrics({"model": "m", "profile": "cpu-int8", "arch": "L4-H256-A4-I1024", "precision": "int8"},
                         queued=lambda: 0)

    def per_call(call: Callable[[], object], n: int, unit: float) -> float:
        tic = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - tic) / n * unit

    out: dict[str, list[float]] = {"answer_us": [], "pass_us": [], "scrape_ms": []}
    for _ in range(trials):
        out["answer_us"].append(per_call(lambda: meter.answered(200, 0.003), calls, 1e6))
        out["pass_us"].append(per_call(lambda: meter.batch(4, 0.003), calls, 1e6))
        out["scrape_ms"].append(per_call(meter.exposition, calls // 500, 1e3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="an exported artifact folder (the serving and PyTorch parts)")
    parser.add_argument("--int8", type=Path, nargs="+", default=[], help="model folders: static against dynamic int8")
    parser.add_argument("--int8-sessions", type=int, default=4, help="paired latency sessions per model")
    parser.add_argument("--out", type=Path, default=Path("bench-out/serve"))
    parser.add_argument("--requests", type=int, nargs=3, default=[200, 600, 1200], help="requests at concurrency 1, 8, 32")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the PyTorch comparison")
    parser.add_argument("--repeats", type=int, default=3, help="server/baseline alternations per concurrency")
    parser.add_argument("--server-args", default="", help="extra serve flags, e.g. '--threads 1 --spinning'")
    parser.add_argument("--no-pytorch", action="store_true", help="serving part only")
    parser.add_argument("--metrics-cost", action="store_true", help="what GET /metrics adds per answer and pass")
    args = parser.parse_args()
    if args.metrics_cost:
        cost = metrics_cost()
        print(" | ".join(f"{k}: {min(v):.2f}-{max(v):.2f}" for k, v in cost.items()) + f" ({len(cost['answer_us'])} trials)")
    if args.int8:
        tic = time.time()
        if args.int8_sessions < 2:
            parser.error("--int8-sessions: at least 2 (a bound needs two sessions)")
        results = bench_int8(args.int8, args.int8_sessions, 10, args.out / "graphs")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_int8.json").write_text(json.dumps({"cpus": os.cpu_count(), "models": results,
                                                               "wall_s": round(time.time() - tic, 1)}, indent=2) + "\n")
        lines = int8_table(results)
        (args.out / "bench_int8.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    if args.artifact is None:
        return
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
