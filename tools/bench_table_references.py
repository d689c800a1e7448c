#!/usr/bin/env python
"""Latency-table predictions for the GLUE benchmark's reference architectures against the same architectures timed
whole, side by side.

Two steps, so that tables written by different versions of the code (whose fingerprints differ, so one version
cannot read the other's rows) are judged against one shared measurement:

  python tools/bench_table_references.py predict TABLE OUT.json    # with the code that wrote TABLE
  python tools/bench_table_references.py time OUT.json [--rounds 8]
  python tools/bench_table_references.py compare TIMED.json PRED.json [PRED.json ...]
  python tools/bench_table_references.py records TABLE RECORD.json [...] [--teacher ARCH]
  python tools/bench_table_references.py rounds ROUNDS.json --reference ARCH [--probe ARCH]

`time` builds each architecture's cpu-int8 graph once and times it in interleaved rounds (one fresh session per
architecture per round); the fastest round is the measurement, as in the table. `compare` prints each table's mean
error, the error left after one common scale factor (a slow state of the whole machine shifts every shape alike
and moves no band of a search whose budgets are architectures), the rank correlation and the order of the two
hand-crafted students the table once swapped. Nothing else should run on the machine during `time`.

`records` needs no timing: it reads `kdnas-deploy compare` records (every round of every session kept) of artifacts
named by architecture (`L4-H312-A12-I1200-s0`; `teacher` is `--teacher`) and puts three ratios of A to B side by
side: the table's prediction, the fastest round of A over the fastest round of B across all sessions (the table's
own estimator, on the same rounds) and the geometric mean of the sessions' paired ratios (what `compare` and the
finals decide on). The first two differ by the table's error; the last two by the estimator alone.

`rounds` asks the same of a file `tools/bench_finals_margin.py` wrote (several graphs in the same interleaved
rounds): each graph's ratio to `--reference` by the fastest rounds and by a pairing with `--probe` (the median of
graph / probe per session, over that of the reference), against the paired ratio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from kdnas_deploy.hardware import load_profile
from kdnas_deploy.space import StudentArch

#: Pairs registered for the paired table (timing method 4) before any of them was timed: shapes of the MiniLM-L6
#: teacher's space that neither the plan-1 runs nor the design of the fix used (ARCHS, the plan-1 MNLI pairs). The
#: acceptance reads `records` of their `compare` sessions against tables of both timing methods.
HELD_OUT_REFERENCE = "L5-H384-A6-I1152"
HELD_OUT_PAIRS = (
    ("L3-H192-A4-I576", HELD_OUT_REFERENCE), ("L4-H192-A6-I768", HELD_OUT_REFERENCE),
    ("L2-H256-A8-I768", HELD_OUT_REFERENCE), ("L3-H256-A4-I320", HELD_OUT_REFERENCE),
    ("L5-H128-A4-I512", HELD_OUT_REFERENCE), ("L1-H384-A6-I1536", HELD_OUT_REFERENCE),
    ("L3-H384-A4-I576", HELD_OUT_REFERENCE), ("L4-H256-A2-I1024", HELD_OUT_REFERENCE),
    ("L4-H256-A2-I1024", "L3-H384-A4-I576"), ("L6-H96-A2-I288", "L2-H128-A2-I256"),
)

#: A second set, registered before any of it was timed, for the same-window protocol: the table is filled cold and
#: every pair compared right after it (then compared again, which states compare's own re-test spread in that
#: window), because compare's ratio of one pair moved 6.8% in 70 minutes on this host (docs/decisions/paired-table.md).
#: Target as the issue states it: mean |table / paired - 1| <= 1.5%, worst <= 3%, paired = the first compare pass.
HELD_OUT_REFERENCE_2 = "L6-H256-A8-I768"
HELD_OUT_PAIRS_2 = (
    ("L2-H192-A6-I576", HELD_OUT_REFERENCE_2), ("L4-H128-A2-I384", HELD_OUT_REFERENCE_2),
    ("L3-H256-A8-I1024", HELD_OUT_REFERENCE_2), ("L1-H256-A4-I768", HELD_OUT_REFERENCE_2),
    ("L6-H128-A4-I256", HELD_OUT_REFERENCE_2), ("L2-H384-A12-I768", HELD_OUT_REFERENCE_2),
    ("L5-H192-A6-I384", HELD_OUT_REFERENCE_2), ("L4-H384-A6-I384", HELD_OUT_REFERENCE_2),
    ("L4-H384-A6-I384", "L3-H384-A12-I768"), ("L6-H128-A4-I256", "L2-H192-A6-I576"),
)

#: The benchmark's teacher and hand-crafted students, then picks its searches made.
ARCHS = ("L6-H384-A12-I1536", "L3-H384-A12-I1536", "L4-H312-A12-I1200", "L2-H256-A4-I1024",
         "L2-H384-A2-I1536", "L1-H384-A2-I1152", "L3-H384-A12-I1152", "L2-H384-A12-I1536")


def predict(table: Path, profile_name: str) -> dict[str, float]:
    from kdnas_deploy.latency.predictor import LatencyModel
    from kdnas_deploy.latency.table import LatencyTable

    with LatencyTable(table, readonly=True) as t:
        model = LatencyModel(t, load_profile(profile_name))
        return {a: model.predict(StudentArch.parse(a)).ms for a in ARCHS}


def time_whole(profile_name: str, rounds: int) -> dict[str, list[float]]:
    """The search's side-by-side timer (the one that confirms its picks), keeping every round."""
    from kdnas_deploy.search.finals import InterleavedTimer

    with InterleavedTimer(load_profile(profile_name), rounds) as timer:
        samples = timer([StudentArch.parse(a) for a in ARCHS])
    return {str(a): v for a, v in samples.items()}


def compare(timed: dict[str, list[float]], predictions: dict[str, dict[str, float]]) -> list[str]:
    keys = list(ARCHS)
    measured = np.array([min(timed[k]) for k in keys])
    lines = ["measured (fastest round): " + ", ".join(f"{k} {m:.3f}" for k, m in zip(keys, measured))]
    for name, pred in predictions.items():
        table = np.array([pred[k] for k in keys])
        log_ratio = np.log(table / measured)
        scale_free = np.abs(log_ratio - np.median(log_ratio))
        lines.append(
            f"{name}: mean |error| {100 * np.mean(np.abs(table / measured - 1)):.1f}%, after one common scale "
            f"{100 * scale_free.mean():.1f}% (worst {100 * scale_free.max():.1f}%), Spearman "
            f"{spearmanr(table, measured).statistic:.3f}; {keys[1]} / {keys[2]}: table {table[1] / table[2]:.2f}, "
            f"measured {measured[1] / measured[2]:.2f}")
    return lines


def record_arch(name: str, teacher: str) -> StudentArch:
    """The architecture an artifact's name starts with (`L4-H312-A12-I1200-s0`); `teacher` for the teacher."""
    name = Path(name).name  # a record's label is the artifact folder as given to `compare`
    return StudentArch.parse(teacher if name == "teacher" else name.rsplit("-s", 1)[0])


def records(table: Path, paths: list[Path], teacher: str, profile_name: str) -> list[dict[str, object]]:
    from kdnas_deploy.latency.compare import load_record
    from kdnas_deploy.latency.predictor import LatencyModel
    from kdnas_deploy.latency.table import LatencyTable

    rows = []
    with LatencyTable(table, readonly=True) as t:
        model = LatencyModel(t, load_profile(profile_name), measure_missing=False)
        for path in paths:
            rec = load_record(path)
            if rec is None or not rec.sessions:
                continue
            a, b = record_arch(rec.a, teacher), record_arch(rec.b, teacher)
            fast_a = min(min(s.a_ms) for s in rec.sessions)
            fast_b = min(min(s.b_ms) for s in rec.sessions)
            rows.append({"a": rec.a, "b": rec.b, "sessions": len(rec.sessions),
                         "table": model.predict(a).ms / model.predict(b).ms,
                         "fastest": fast_a / fast_b, "paired": rec.bounds()[0]})
    return rows


def records_lines(rows: list[dict[str, object]]) -> list[str]:
    lines = ["| A | B | sessions | table | fastest rounds | paired (geomean) | table / paired | fastest / paired |",
             "|---|---|---|---|---|---|---|---|"]
    errors = []
    for r in rows:
        t, f, p = (float(r[k]) for k in ("table", "fastest", "paired"))  # type: ignore[arg-type]
        errors.append(abs(t / p - 1))
        lines.append(f"| `{r['a']}` | `{r['b']}` | {r['sessions']} | {t:.3f} | {f:.3f} | {p:.3f} | "
                     f"{100 * (t / p - 1):+.1f}% | {100 * (f / p - 1):+.1f}% |")
    if errors:
        lines.append(f"\ntable / paired over {len(errors)} pairs: mean |error| {100 * np.mean(errors):.2f}%, "
                     f"worst {100 * max(errors):.2f}%")
    return lines


def rounds_lines(path: Path, reference: str, probe: str) -> list[str]:
    """Fastest-round and probe-paired ratios to `reference` against the paired ratio, from kept rounds: each session
    paired by `timing.paired_ratio`, sessions joined by `compare.ratio_bounds`' geometric mean, as `compare` does."""
    from kdnas_deploy.latency.compare import ratio_bounds
    from kdnas_deploy.latency.timing import paired_ratio

    (_, sessions), = json.loads(path.read_text())["sessions_rounds_ms"].items()
    lines = [f"| ratio to `{reference}` | paired | fastest rounds / paired | paired with `{probe}` / paired |",
             "|---|---|---|---|"]
    for arch in sessions[0]:
        if arch in (reference, probe):
            continue
        paired = ratio_bounds([paired_ratio(s[arch], s[reference]) for s in sessions])[0]
        fast = min(min(s[arch]) for s in sessions) / min(min(s[reference]) for s in sessions)
        by_probe = ratio_bounds([paired_ratio(s[arch], s[probe]) / paired_ratio(s[reference], s[probe])
                                 for s in sessions])[0]
        lines.append(f"| `{arch}` | {paired:.3f} | {100 * (fast / paired - 1):+.1f}% | {100 * (by_probe / paired - 1):+.1f}% |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu-int8")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict")
    p.add_argument("table", type=Path)
    p.add_argument("out", type=Path)
    t = sub.add_parser("time")
    t.add_argument("out", type=Path)
    t.add_argument("--rounds", type=int, default=8)
    c = sub.add_parser("compare")
    c.add_argument("timed", type=Path)
    c.add_argument("predictions", type=Path, nargs="+")
    r = sub.add_parser("records")
    r.add_argument("table", type=Path)
    r.add_argument("records", type=Path, nargs="+")
    r.add_argument("--teacher", default=ARCHS[0], help="The architecture a record's 'teacher' stands for.")
    w = sub.add_parser("rounds")
    w.add_argument("file", type=Path)
    w.add_argument("--reference", required=True)
    w.add_argument("--probe", default="L2-H256-A4-I1024", help="The table's probe shape, if the file timed it.")
    args = ap.parse_args()
    if args.cmd == "rounds":
        print("\n".join(rounds_lines(args.file, args.reference, args.probe)))
    elif args.cmd == "records":
        print("\n".join(records_lines(records(args.table, args.records, args.teacher, args.profile))))
    elif args.cmd == "predict":
        args.out.write_text(json.dumps(predict(args.table, args.profile), indent=1))
    elif args.cmd == "time":
        args.out.write_text(json.dumps(time_whole(args.profile, args.rounds), indent=1))
    else:
        timed = json.loads(args.timed.read_text())
        preds = {str(p): json.loads(p.read_text()) for p in args.predictions}
        print("\n".join(compare(timed, preds)))


if __name__ == "__main__":
    main()
