"""Ranked against first-units inheritance: what sorting the teacher's units by importance buys a sliced student.

`--init inherit` gives a student narrower than its teacher the teacher's *first* heads, FFN neurons and hidden
dimensions; `--init ranked` the most important ones (kdnas_deploy/distill/ranking.py). This distils each
architecture both ways on the same proxy rows with the same seed, interleaved, and scores both on the proxy's
held-out slice and on the whole dev split. Default set-up: the GLUE benchmark's MNLI search proxy (1,000 rows,
500 held out, 2 epochs, 128 tokens) and architectures from its search and finals that slice at least one width.

    python tools/bench_kdnas.py --tasks mnli ...     # or any teacher folder fine-tuned with `kdnas-deploy teacher`
    python tools/bench_ranking.py --teacher WORK/mnli/teacher [--out bench-ranking] [--seeds 0 1]

Every finished run is a model folder under OUT and is not repeated when the script runs again. Results go to
OUT/results.json and OUT/results.md. Accuracy does not depend on machine load; only the wall times do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from kdnas_deploy.data.sources import DataSource  # noqa: E402
from kdnas_deploy.distill.api import distill  # noqa: E402
from kdnas_deploy.data.prepare import prepare  # noqa: E402
from kdnas_deploy.distill.ranking import rank_teacher  # noqa: E402
from kdnas_deploy.distill.student import layer_map  # noqa: E402
from kdnas_deploy.distill.trainer import TrainConfig  # noqa: E402
from kdnas_deploy.model_folder import load_classifier, read_info, versions  # noqa: E402
from kdnas_deploy.space import StudentArch  # noqa: E402

ARCHS = ("L5-H384-A12-I384", "L4-H384-A12-I768", "L3-H384-A6-I768", "L1-H384-A2-I384",
         "L4-H312-A12-I1200", "L2-H256-A4-I1024", "L3-H192-A4-I384")


def kept_share(importance, teacher: StudentArch, arch: StudentArch) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The share of the mapped teacher layers' importance a student inherits, ranked and first-taken, per kind.
    Heads count as kept when the student slices whole heads (no more heads, no wider heads than the teacher);
    otherwise it keeps the first `hidden` attention dimensions, i.e. that many teacher heads' worth."""
    layers = layer_map(arch.layers, teacher.layers)
    if arch.heads <= teacher.heads and arch.head_size <= teacher.head_size:
        keep_heads = arch.heads
    else:
        keep_heads = min(teacher.heads, -(-min(arch.hidden, teacher.hidden) // teacher.head_size))
    out = {}
    for kind, scores, keep in (("heads", importance.heads, keep_heads), ("ffn", importance.ffn, arch.ffn)):
        total = sum(float(scores[t].sum()) for t in layers)
        out[f"{kind}_ranked"] = sum(float(np.sort(scores[t])[::-1][:keep].sum()) for t in layers) / total
        out[f"{kind}_first"] = sum(float(scores[t][:keep].sum()) for t in layers) / total
    total = float(importance.hidden.sum())
    out["hidden_ranked"] = float(np.sort(importance.hidden)[::-1][:arch.hidden].sum()) / total
    out["hidden_first"] = float(importance.hidden[:arch.hidden].sum()) / total
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="A teacher folder made by `kdnas-deploy teacher`.")
    ap.add_argument("--out", type=Path, default=Path("bench-ranking"))
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--proxy", type=int, default=1000)
    ap.add_argument("--held-out", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    info = read_info(args.teacher)
    if info is None or not info.data:
        sys.exit(f"{args.teacher}: not a teacher folder made by `kdnas-deploy teacher`")
    source = DataSource.from_dict(info.data)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    prepared = prepare(args.teacher, source, args.max_length)
    teacher = load_classifier(args.teacher)
    tic = time.perf_counter()
    _, importance = rank_teacher(teacher, prepared.encoded.train, prepared.task.is_regression,
                                 prepared.encoded.pad_token_id)
    ranking_s = time.perf_counter() - tic
    teacher_arch = StudentArch.from_config(teacher.config)

    runs = []
    for seed in args.seeds:
        for arch in args.archs:
            for init in ("inherit", "ranked"):
                folder = args.out / f"{arch}-{init}-s{seed}"
                result = read_info(folder)
                if result is None:
                    print(f"{arch} {init} seed {seed} ...", flush=True)
                    result = distill(args.teacher, source, arch, folder, init=init, proxy=args.proxy,  # type: ignore[arg-type]
                                     held_out=args.held_out, max_length=args.max_length,
                                     train_config=TrainConfig(epochs=args.epochs, seed=seed))
                runs.append({"arch": arch, "init": init, "seed": seed,
                             "held_out": result.metrics["held_out"]["score"], "dev": result.metrics["dev"]["score"],
                             "wall_s": result.training["wall_seconds"]})
                print(f"  {arch} {init} s{seed}: held-out {runs[-1]['held_out']:.4f} dev {runs[-1]['dev']:.4f}", flush=True)

    pairs = []
    for seed in args.seeds:
        for arch in args.archs:
            a, b = (next(r for r in runs if (r["arch"], r["init"], r["seed"]) == (arch, init, seed))
                    for init in ("inherit", "ranked"))
            pairs.append({"arch": arch, "seed": seed, "held_out": (a["held_out"], b["held_out"]),
                          "dev": (a["dev"], b["dev"]),
                          "kept": kept_share(importance, teacher_arch, StudentArch.parse(arch))})
    summary = {}
    for split in ("held_out", "dev"):
        diffs = [100 * (p[split][1] - p[split][0]) for p in pairs]
        summary[split] = {"mean": statistics.fmean(diffs), "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                          "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs), "n": len(diffs)}
    result = {"teacher": args.teacher, "task": prepared.task.name, "settings": {k: v for k, v in vars(args).items()
              if k not in ("out", "teacher")}, "ranking_seconds": round(ranking_s, 1), "runs": runs, "pairs": pairs,
              "summary": summary, "wall_seconds": round(time.perf_counter() - started, 1),
              "machine": platform.processor() or platform.machine(), "versions": versions()}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))

    lines = [f"# Ranked against first-units inheritance, {prepared.task.name}", "",
             f"Teacher `{args.teacher}` ({teacher_arch}). Proxy {args.proxy} rows, {args.held_out} held out, "
             f"{args.epochs} epochs, {args.max_length} tokens; seeds {args.seeds}. Ranking took {ranking_s:.0f} s "
             f"({importance.rows} rows). Scores in points; kept = share of the mapped teacher layers' importance "
             "the student inherits (first / ranked).", "",
             "| architecture | seed | held-out first | ranked | diff | dev first | ranked | diff | kept FFN | kept heads | kept hidden |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        k = p["kept"]
        lines.append(f"| `{p['arch']}` | {p['seed']} | {100 * p['held_out'][0]:.2f} | {100 * p['held_out'][1]:.2f} | "
                     f"{100 * (p['held_out'][1] - p['held_out'][0]):+.2f} | {100 * p['dev'][0]:.2f} | "
                     f"{100 * p['dev'][1]:.2f} | {100 * (p['dev'][1] - p['dev'][0]):+.2f} | "
                     f"{k['ffn_first']:.2f} / {k['ffn_ranked']:.2f} | {k['heads_first']:.2f} / {k['heads_ranked']:.2f} | "
                     f"{k['hidden_first']:.2f} / {k['hidden_ranked']:.2f} |")
    lines.append("")
    for split, s in summary.items():
        lines.append(f"- {split.replace('_', '-')}: ranked minus first {s['mean']:+.2f} points on average "
                     f"(sd {s['sd']:.2f} over {s['n']} pairs); ranked ahead in {s['wins']}, behind in {s['losses']}.")
    lines.append(f"- Wall time {result['wall_seconds'] / 60:.0f} min on {result['machine']}.")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
