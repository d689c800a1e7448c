#!/usr/bin/env python
"""How far can the latency table be trusted? Predicted against measured latency, per profile.

For each profile (default: cpu and cpu-int8):
1. cold: fill a fresh table for the default space (blocks + calibration models), timed;
2. warm: the same again, served from the table, timed (library call and the CLI as a user runs it);
3. freeze the table (opened read-only) and predict N random architectures it has never timed whole;
4. measure each of them whole: `--sessions` fresh ONNX Runtime sessions per architecture,
   interleaved round by round over all N so that a slow spell of the machine hits every
   architecture alike; the measurement is the median over sessions. A fixed probe graph is timed
   in every round too: its per-round median shows the machine's state while measuring;
5. the noise floor, two ways: the rounds split into interleaved halves (even/odd: jitter between
   sessions) and into time-separated halves (first/second: also the machine's drift over
   minutes). Each half is itself a measurement of at least 3 sessions; their disagreement is the
   test-retest error, and the prediction is scored against each half as well.

Run: python tools/bench_latency.py [--profiles cpu,cpu-int8] [--n 30] [--sessions 6] [--out bench-out/latency]
Nothing else should run on the machine meanwhile: every other process shows up in the timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kdnas_deploy.hardware import load_profile
from kdnas_deploy.latency.measure import OnnxMeasurer
from kdnas_deploy.latency.predictor import LatencyModel, items_for
from kdnas_deploy.latency.profiler import DEFAULT_CALIBRATION, error_stats, plan, profile_items
from kdnas_deploy.latency.table import LatencyTable
from kdnas_deploy.space import REFERENCE_ARCHS, SearchSpace, StudentArch


def held_out_archs(space: SearchSpace, model: LatencyModel, n: int, seed: int) -> list[StudentArch]:
    timed = {e.arch for e in model.table.entries(model.fingerprint, model.batch, model.seq_len)}
    return [a for a in space.sample(len(space), seed) if a not in timed][:n]


PROBE = StudentArch(4, 256, 4, 1024)


def measure_interleaved(archs, profile, sessions: int, seed: int, workdir: Path) -> np.ndarray:
    """medians[round, arch]: one fresh session per (round, arch), arch order shuffled per round.

    The last column is the probe graph (PROBE), timed in every round like the others.
    """
    measurer = OnnxMeasurer()
    graphs = []
    for k, arch in enumerate([*archs, PROBE]):
        graphs.append(measurer.build(arch, profile, workdir / f"{k}"))
        print(f"  built {k + 1}/{len(archs)} {arch}", file=sys.stderr, end="\r")
    rng = np.random.default_rng(seed)
    medians = np.zeros((sessions, len(graphs)))
    for r in range(sessions):
        for k in rng.permutation(len(graphs)):
            medians[r, k] = measurer.time(graphs[k], profile, seed=r).median_ms
        print(f"  session round {r + 1}/{sessions}            ", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return medians


def cli_warm_seconds(profile: str, table: Path, args: argparse.Namespace) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "kdnas_deploy.cli", "profile", "--hw", profile, "--table", str(table), "--json",
         "--calibration", str(args.calibration), "--seed", str(args.seed)],
        check=True, capture_output=True,
    )
    return time.perf_counter() - t0


def bench_profile(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    profile = load_profile(name)
    space = SearchSpace.default()
    table_path = Path(args.table or workdir / f"{name}.sqlite")
    # Exactly what `kdnas-deploy profile --hw NAME` needs, so the CLI's warm run below is warm.
    items = plan(space, args.calibration, args.seed) + [it for a in REFERENCE_ARCHS for it in items_for(a)]
    print(f"[{name}] cold profile of {space.name} ({len(space.blocks())} layer shapes) into {table_path}", file=sys.stderr)
    with LatencyTable(table_path) as table:
        t0 = time.perf_counter()
        cold = profile_items(LatencyModel(table, profile), items, seed=args.seed)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = profile_items(LatencyModel(table, profile), items, seed=args.seed)
        warm_s = time.perf_counter() - t0
    warm_cli_s = cli_warm_seconds(name, table_path, args)

    with LatencyTable(table_path, readonly=True) as frozen:
        model = LatencyModel(frozen, profile)
        archs = held_out_archs(space, model, args.n, args.seed + 1000)
        preds = [model.predict(a) for a in archs]
        cal = model.calibration()
    print(f"[{name}] measuring {len(archs)} held-out architectures, {args.sessions} interleaved sessions each", file=sys.stderr)
    timed = measure_interleaved(archs, profile, args.sessions, args.seed, workdir / f"graphs-{name}")
    medians, probe = timed[:, :-1], timed[:, -1]
    measured = np.median(medians, axis=0)
    half = args.sessions // 2
    even, odd = np.median(medians[0::2], axis=0), np.median(medians[1::2], axis=0)
    first, second = np.median(medians[:half], axis=0), np.median(medians[half:], axis=0)
    pred_ms = np.array([p.ms for p in preds])
    composed_ms = np.array([p.composed_ms for p in preds])
    stats = error_stats(pred_ms, measured)
    raw = error_stats(composed_ms, measured)
    session_spread = np.median((medians.max(axis=0) - medians.min(axis=0)) / measured)
    return {
        "profile": name,
        "precision": profile.precision.value,
        "shape": {"batch": profile.shape.batch_size, "seq_len": profile.shape.seq_len},
        "space": space.name,
        "timings_in_table": cold.total,
        "cold_s": cold_s,
        "cold_measured": len(cold.measured),
        "warm_s": warm_s,
        "warm_measured": len(warm.measured),
        "warm_cli_s": warm_cli_s,
        "unfused": [str(a) for a in cold.unfused],
        "noisy_blocks": len(cold.noisy),
        "calibration": {"scale": cal.scale, "exponent": cal.exponent, "points": cal.points},
        "prediction": stats.to_dict(),
        "composition_only": raw.to_dict(),
        "noise_floor_test_retest": error_stats(even, odd).to_dict(),
        "noise_floor_time_separated": error_stats(first, second).to_dict(),
        "prediction_vs_first_half": error_stats(pred_ms, first).to_dict(),
        "prediction_vs_second_half": error_stats(pred_ms, second).to_dict(),
        "median_session_range_pct": float(session_spread * 100),
        "probe": {"arch": str(PROBE), "round_medians_ms": [float(x) for x in probe],
                  "range_pct": float((probe.max() - probe.min()) / np.median(probe) * 100)},
        "rows": [
            {"arch": str(a), "predicted_ms": float(p), "composed_ms": float(c), "measured_ms": float(m),
             "session_medians_ms": [float(x) for x in medians[:, k]]}
            for k, (a, p, c, m) in enumerate(zip(archs, pred_ms, composed_ms, measured))
        ],
    }


def markdown(results: list[dict], meta: dict) -> str:
    def pct(stats: dict) -> str:
        return f"{stats['mape_pct']:.1f}% / {stats['within_10pct'] * 100:.0f}%"

    lines = [
        f"Machine: {meta['cpu']} x{meta['cpu_count']}, onnxruntime {meta['onnxruntime']}, torch {meta['torch']}, "
        f"{meta['date']}; {meta['n']} held-out architectures, {meta['sessions']} interleaved sessions each; "
        f"total {meta['total_s'] / 60:.1f} min.",
        "",
        "| profile | MAPE / within 10% | Spearman | worst | composition only | noise floor: even/odd sessions | noise floor: first/second half | prediction vs first half | prediction vs second half | probe drift over rounds | cold profile | warm (library / CLI) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r["prediction"]
        lines.append(
            f"| {r['profile']} | {pct(p)} | {p['spearman']:.3f} | {p['max_ape_pct']:.1f}% | {pct(r['composition_only'])} | "
            f"{pct(r['noise_floor_test_retest'])} | {pct(r['noise_floor_time_separated'])} | "
            f"{pct(r['prediction_vs_first_half'])} | {pct(r['prediction_vs_second_half'])} | {r['probe']['range_pct']:.0f}% | "
            f"{r['cold_s'] / 60:.1f} min ({r['timings_in_table']} timings) | {r['warm_s']:.2f} s / {r['warm_cli_s']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", default="cpu,cpu-int8")
    ap.add_argument("--n", type=int, default=30, help="held-out architectures per profile")
    ap.add_argument("--sessions", type=int, default=6, help="fresh sessions per architecture (>= 3)")
    ap.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", help="reuse this table instead of a fresh one (then 'cold' is not cold)")
    ap.add_argument("--out", default="bench-out/latency")
    args = ap.parse_args()
    if args.sessions < 6:
        ap.error("--sessions must be at least 6 (two halves of at least 3 for the noise floor)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import torch

    from kdnas_deploy.fingerprint import cpu_model

    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="kdnas-bench-") as tmp:
        for name in args.profiles.split(","):
            results.append(bench_profile(name.strip(), args, Path(tmp)))
    meta = {"cpu": cpu_model(), "cpu_count": __import__("os").cpu_count(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "python": platform.python_version(), "n": args.n, "sessions": args.sessions,
            "total_s": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%d")}
    (out / "latency.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = markdown(results, meta)
    (out / "latency.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
