#!/usr/bin/env python
"""Which per-graph estimate of latency survives re-timing on this machine: the median or the fastest of N sessions?

Builds the graphs a 6x384 teacher's latency is composed from (block, stem and base per width) and whole models of
several depths, then times them all in interleaved rounds (one fresh session per graph per round), twice. For each
estimator and each number of sessions N (drawn from the rounds, 200 draws), it reports:
- the re-test error: mean |log(estimate in pass 2 / estimate in pass 1)| over the whole-model and block graphs;
- the composition error: whole models against base + L * (block - stem) / 2 built from the same estimator.

Run: python tools/bench_timing_estimators.py [--rounds 8] [--profile cpu-int8] [--out bench-out/estimators]
Nothing else should run on the machine meanwhile (about 2.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from kdnas_deploy.hardware import load_profile
from kdnas_deploy.latency.measure import OnnxMeasurer
from kdnas_deploy.latency.predictor import BLOCK_VOCAB, base_arch, block_arch
from kdnas_deploy.latency.timing import interleaved_rounds
from kdnas_deploy.space import BERT_VOCAB_SIZE, StudentArch

WHOLE = ("L6-H384-A12-I1536", "L3-H384-A12-I1536", "L2-H384-A12-I1536", "L4-H312-A12-I1200", "L2-H256-A4-I1024")
ESTIMATORS = {"median": np.median, "fastest": np.min}


def graphs_needed() -> dict[str, tuple[StudentArch, int]]:
    out: dict[str, tuple[StudentArch, int]] = {}
    for text in WHOLE:
        arch = StudentArch.parse(text)
        out[text] = (arch, BERT_VOCAB_SIZE)
        out[f"block-{arch.hidden}-{arch.heads}-{arch.ffn}"] = (block_arch(*arch.block), BLOCK_VOCAB)
        out[f"stem-{arch.hidden}"] = (base_arch(arch.hidden), BLOCK_VOCAB)
        out[f"base-{arch.hidden}"] = (base_arch(arch.hidden), BERT_VOCAB_SIZE)
    return out


def composed(est: dict[str, float], arch: StudentArch) -> float:
    layer = (est[f"block-{arch.hidden}-{arch.heads}-{arch.ffn}"] - est[f"stem-{arch.hidden}"]) / 2
    return est[f"base-{arch.hidden}"] + arch.layers * layer


def analyse(passes: list[dict[str, list[float]]], draws: int = 200, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    keys = [k for k in passes[0] if not k.startswith(("stem", "base"))]
    rounds = len(next(iter(passes[0].values())))
    rows = []
    for n in range(1, rounds + 1):
        for name, f in ESTIMATORS.items():
            retest, comp = [], []
            for _ in range(draws):
                est = [{k: float(f(np.asarray(v)[rng.choice(rounds, n, replace=False)])) for k, v in p.items()}
                       for p in passes]
                retest.append(np.mean([abs(np.log(est[1][k] / est[0][k])) for k in keys]))
                comp.append(np.mean([abs(np.log(composed(e, StudentArch.parse(a)) / e[a])) for e in est for a in WHOLE]))
            rows.append({"sessions": n, "estimator": name, "retest_pct": 100 * float(np.mean(retest)),
                         "composition_pct": 100 * float(np.mean(comp))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--profile", default="cpu-int8")
    ap.add_argument("--out", default="bench-out/estimators")
    args = ap.parse_args()
    profile, measurer = load_profile(args.profile), OnnxMeasurer()
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {k: measurer.build(a, profile, Path(tmp) / k, v) for k, (a, v) in graphs_needed().items()}
        passes = [interleaved_rounds(list(graphs), lambda k, r: measurer.time(graphs[k], profile, r).median_ms,
                                     args.rounds) for _ in range(2)]
    rows = analyse(passes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimators.json").write_text(json.dumps({"profile": args.profile, "passes": passes, "rows": rows}, indent=1))
    lines = ["| sessions | median: re-test | fastest: re-test | median: composition | fastest: composition |",
             "|---|---|---|---|---|"]
    by = {(r["sessions"], r["estimator"]): r for r in rows}
    for n in range(1, args.rounds + 1):
        m, f = by[(n, "median")], by[(n, "fastest")]
        lines.append(f"| {n} | {m['retest_pct']:.1f}% | {f['retest_pct']:.1f}% | {m['composition_pct']:.1f}% | "
                     f"{f['composition_pct']:.1f}% |")
    (out / "estimators.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
