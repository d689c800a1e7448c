#!/usr/bin/env python
"""How far can the latency table be trusted? Predicted against measured latency, per profile.

For each profile (default: cpu and cpu-int8):
1. cold: fill a fresh table for the default space (blocks + calibration models), timed;
2. warm: the same again, served from the table, timed (library call and the CLI as a user runs it);
3. freeze the table (opened read-only) and predict N random architectures it has never timed whole;
4. measure each of them whole: `--sessions` fresh ONNX Runtime sessions per architecture,
   interleaved round by round over all N so that a slow spell of the machine hits every
   architecture alike; the measurement is the fastest session, as in the table. Each session is bracketed by
   the profiler's probe, so sessions met by a slow spell are known (and more rounds run, up to
   --max-rounds, until every architecture has enough calm ones);
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
from kdnas_deploy.latency.predictor import LatencyModel, items_for
from kdnas_deploy.latency.profiler import (
    CALM_RATIO, DEFAULT_CALIBRATION, PROBE, Probe, error_stats, plan, profile_items,
)
from kdnas_deploy.latency.table import LatencyTable
from kdnas_deploy.space import REFERENCE_ARCHS, SearchSpace, StudentArch


def held_out_archs(space: SearchSpace, model: LatencyModel, n: int, seed: int) -> list[StudentArch]:
    timed = {e.arch for e in model.table.entries(model.fingerprint, model.batch, model.seq_len)}
    return [a for a in space.sample(len(space), seed) if a not in timed][:n]


def measure_interleaved(archs, model: LatencyModel, sessions: int, max_rounds: int, seed: int, workdir: Path):
    """One fresh session per (round, arch), arch order shuffled per round, each bracketed by the probe.

    Returns medians[round, arch] and probe[round, arch] (the slower of the two bracketing probe
    times). Rounds continue past `sessions` (up to `max_rounds`) until every architecture has
    `sessions` calm sessions, judged against the probe's best stored in the table.
    """
    profile, measurer = model.profile, model.measurer
    graphs = []
    for k, arch in enumerate(archs):
        graphs.append(measurer.build(arch, profile, workdir / f"{k}"))
        print(f"  built {k + 1}/{len(archs)} {arch}", file=sys.stderr, end="\r")
    probe = Probe(model, workdir)
    rng = np.random.default_rng(seed)
    medians, probes = [], []
    for r in range(max_rounds):
        row, prow = np.zeros(len(graphs)), np.zeros(len(graphs))
        for k in rng.permutation(len(graphs)):
            timing, prow[k] = probe.bracket(lambda: measurer.time(graphs[k], profile, seed=r))
            row[k] = timing.median_ms
        medians.append(row)
        probes.append(prow)
        calm = np.array([[probe.calm(x) for x in pr] for pr in probes])
        print(f"  round {r + 1}: {int(calm[-1].sum())}/{len(graphs)} calm sessions      ", file=sys.stderr, end="\r")
        if r + 1 >= sessions and calm.sum(axis=0).min() >= sessions:
            break
    print(file=sys.stderr)
    return np.array(medians), np.array(probes), probe.best_ms


def halves(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: the fastest of the kept sessions (the table's estimate), and of their first and second half (in
    time)."""
    full, first, second = [], [], []
    for col, keep in zip(values.T, mask.T):
        kept = col[keep] if keep.sum() >= 2 else col
        h = len(kept) // 2
        full.append(np.min(kept))
        first.append(np.min(kept[:h]))
        second.append(np.min(kept[h:]))
    return np.array(full), np.array(first), np.array(second)


def cli_warm_seconds(profile: str, table: Path, args: argparse.Namespace) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "kdnas_deploy.cli", "profile", "--hw", profile, "--table", str(table), "--json",
         "--calibration", str(args.calibration), "--seed", str(args.seed), "--space", str(args.space)],
        check=True, capture_output=True,
    )
    return time.perf_counter() - t0


def bench_profile(name: str, space: SearchSpace, args: argparse.Namespace, workdir: Path) -> dict:
    profile = load_profile(name)
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
        # The same table composing each layer from its own block row, as before the layer fit: the comparison.
        from_rows = LatencyModel(frozen, profile, layer_fit=False)
        rows_ms = np.array([from_rows.predict(a).ms for a in archs])
        cal = model.calibration()
        fit = model.layer_fit()
        print(f"[{name}] measuring {len(archs)} held-out architectures, {args.sessions}+ interleaved sessions each",
              file=sys.stderr)
        medians, probes, probe_best = measure_interleaved(
            archs, model, args.sessions, args.max_rounds, args.seed, workdir / f"graphs-{name}")
    calm = probes <= CALM_RATIO * probe_best
    everything = np.ones_like(calm)
    measured, first, second = halves(medians, everything)
    calm_measured, calm_first, calm_second = halves(medians, calm)
    even, odd = np.min(medians[0::2], axis=0), np.min(medians[1::2], axis=0)
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
        "layer_fit_blocks": fit.points if fit is not None else None,
        "prediction": stats.to_dict(),
        "prediction_from_block_rows": error_stats(rows_ms, measured).to_dict(),
        "composition_only": raw.to_dict(),
        "noise_floor_test_retest": error_stats(even, odd).to_dict(),
        "noise_floor_time_separated": error_stats(first, second).to_dict(),
        "prediction_vs_first_half": error_stats(pred_ms, first).to_dict(),
        "prediction_vs_second_half": error_stats(pred_ms, second).to_dict(),
        "calm": {
            "prediction": error_stats(pred_ms, calm_measured).to_dict(),
            "prediction_from_block_rows": error_stats(rows_ms, calm_measured).to_dict(),
            "noise_floor_time_separated": error_stats(calm_first, calm_second).to_dict(),
            "sessions": int(calm.sum()), "of_sessions": int(calm.size),
        },
        "median_session_range_pct": float(session_spread * 100),
        "probe": {"arch": str(PROBE), "best_ms_in_table": probe_best,
                  "round_medians_ms": [float(x) for x in np.median(probes, axis=1)],
                  "slowest_over_best_pct": float((probes.max() / probe_best - 1) * 100)},
        "rows": [
            {"arch": str(a), "predicted_ms": float(p), "composed_ms": float(c), "from_block_rows_ms": float(r),
             "measured_ms": float(m), "session_medians_ms": [float(x) for x in medians[:, k]],
             "session_probe_ms": [float(x) for x in probes[:, k]]}
            for k, (a, p, c, r, m) in enumerate(zip(archs, pred_ms, composed_ms, rows_ms, measured))
        ],
    }


def markdown(results: list[dict], meta: dict) -> str:
    def pct(stats: dict) -> str:
        return f"{stats['mape_pct']:.1f}% / {stats['within_10pct'] * 100:.0f}%"

    lines = [
        f"Machine: {meta['cpu']} x{meta['cpu_count']}, onnxruntime {meta['onnxruntime']}, torch {meta['torch']}, "
        f"{meta['date']}; space {meta['space']}; {meta['n']} held-out architectures, at least {meta['sessions']} interleaved sessions each; "
        f"total {meta['total_s'] / 60:.1f} min. Cells: MAPE / share within 10%.",
        "",
        "| profile | predicted vs measured (all sessions) | Spearman | worst | composition only | noise floor: even/odd | noise floor: first/second half | calm sessions | predicted vs measured (calm sessions) | noise floor, calm: first/second half | slowest probe over its best | cold profile | warm (library / CLI) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows_lines = [
        "",
        "The same table without the layer fit (each layer from its own block row), against the same sessions:",
        "",
        "| profile | blocks in the fit | with the fit: all sessions, Spearman | from the rows: all sessions, Spearman | with the fit: calm | from the rows: calm |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        p, c = r["prediction"], r["calm"]
        lines.append(
            f"| {r['profile']} | {pct(p)} | {p['spearman']:.3f} | {p['max_ape_pct']:.1f}% | {pct(r['composition_only'])} | "
            f"{pct(r['noise_floor_test_retest'])} | {pct(r['noise_floor_time_separated'])} | "
            f"{c['sessions']}/{c['of_sessions']} | {pct(c['prediction'])} (Spearman {c['prediction']['spearman']:.3f}) | "
            f"{pct(c['noise_floor_time_separated'])} | {r['probe']['slowest_over_best_pct']:.0f}% | "
            f"{r['cold_s'] / 60:.1f} min ({r['timings_in_table']} timings) | {r['warm_s']:.2f} s / {r['warm_cli_s']:.1f} s |"
        )
        f, b = r["prediction_from_block_rows"], c["prediction_from_block_rows"]
        rows_lines.append(
            f"| {r['profile']} | {r['layer_fit_blocks']} | {pct(p)}, {p['spearman']:.3f} | {pct(f)}, {f['spearman']:.3f} | "
            f"{pct(c['prediction'])} | {pct(b)} |"
        )
    return "\n".join(lines + rows_lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", default="cpu,cpu-int8")
    ap.add_argument("--space", default="auto", help="search space TOML (default: the BERT-base space)")
    ap.add_argument("--n", type=int, default=30, help="held-out architectures per profile")
    ap.add_argument("--sessions", type=int, default=6, help="fresh sessions per architecture (>= 3)")
    ap.add_argument("--max-rounds", type=int, default=12, help="cap on rounds while collecting calm sessions")
    ap.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", help="reuse this table instead of a fresh one (then 'cold' is not cold)")
    ap.add_argument("--out", default="bench-out/latency")
    args = ap.parse_args()
    if args.sessions < 6 or args.max_rounds < args.sessions:
        ap.error("--sessions must be at least 6 (two halves of at least 3) and at most --max-rounds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import torch

    from kdnas_deploy.instruction_set import cpu_model

    space = SearchSpace.resolve(args.space)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="kdnas-bench-") as tmp:
        for name in args.profiles.split(","):
            results.append(bench_profile(name.strip(), space, args, Path(tmp)))
    meta = {"cpu": cpu_model(), "cpu_count": __import__("os").cpu_count(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "python": platform.python_version(), "n": args.n, "sessions": args.sessions, "space": space.name,
            "total_s": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%d")}
    (out / "latency.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = markdown(results, meta)
    (out / "latency.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
