#!/usr/bin/env python
"""Latency-table predictions with and without the layer fit, against the search finals' side-by-side timings.

The GLUE benchmark keeps each task's latency table (`latency-table.json`) and each search's report in its record.
A report's finals time every finalist with its budget's reference architecture in interleaved sessions on the
host that made the table. Those sessions are measurements the table never saw, made for another purpose, so they
can judge the table's predictions without timing anything:

  python tools/bench_layer_fit.py benchmarks/records/mnli-one-host/mnli benchmarks/records/fastest-session/mnli

For each record it prints, per prediction method, the within-session error: in each session of three or more
architectures, the ratio of prediction to measurement over the session's median ratio (a slow state of the whole
machine moves every graph alike, and the finals compare within a session). "rows" composes each layer from its
own block row, as the table did before the layer fit; "fit" is the table as it predicts now. Nothing is timed,
so it can run beside other work.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from kdnas_deploy.hardware import load_profile
from kdnas_deploy.space import StudentArch

PROFILE = "cpu-int8"  # what the benchmark's searches and finals use
STRATEGIES = ("kdnas", "random")


def read_record(folder: Path) -> tuple[dict, list[dict[str, float]]]:
    """The recorded table rows and every finals session (architecture -> measured ms) of the record's searches."""
    rows = json.loads(json.loads((folder / "latency-table.json").read_text())["latency-table.json"]["text"])
    sessions = []
    for strategy in STRATEGIES:
        path = folder / f"search-{strategy}.json"
        if not path.is_file():
            continue
        report = json.loads(json.loads(path.read_text())[f"search-{strategy}/report.json"]["text"])
        for choice in report["choices"]:
            # Reports from before the re-timing of near misses keep one session per choice, as `measured_ms`.
            for session in choice.get("sessions") or [{"measured_ms": choice["measured_ms"]}]:
                sessions.append(session["measured_ms"])
    return rows, sessions


def predictions(rows: dict, archs: set[str], layer_fit: bool) -> dict[str, float]:
    from kdnas_deploy.latency.predictor import LatencyModel
    from kdnas_deploy.latency.table import LatencyTable

    with tempfile.TemporaryDirectory() as tmp, LatencyTable(Path(tmp) / "table.sqlite") as table:
        table.import_rows(rows)
        model = LatencyModel(table, load_profile(PROFILE), machine=rows["fingerprint"]["id"], measure_missing=False,
                             layer_fit=layer_fit)
        return {a: model.predict(StudentArch.parse(a)).ms for a in sorted(archs)}


def session_errors(sessions: list[dict[str, float]], predicted: dict[str, float]) -> np.ndarray:
    errors: list[float] = []
    for session in sessions:
        if len(session) < 3:
            continue
        log_ratio = np.array([np.log(predicted[a] / ms) for a, ms in session.items()])
        errors += list(np.abs(np.exp(log_ratio - np.median(log_ratio)) - 1))
    return np.array(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+", type=Path, help="benchmarks/records/RUN/TASK folders")
    args = ap.parse_args()
    for folder in args.records:
        rows, sessions = read_record(folder)
        archs = {a for s in sessions for a in s}
        cpu = rows["fingerprint"]["info"].get("cpu")
        print(f"{folder}: {cpu}, {len(sessions)} finals sessions, {len(archs)} architectures")
        for name, fit in (("rows", False), ("fit", True)):
            e = session_errors(sessions, predictions(rows, archs, fit))
            print(f"  {name:4s} {len(e)} points: median {np.median(e):.1%}, p90 {np.quantile(e, 0.9):.1%}, "
                  f"max {e.max():.1%}, within 5% {np.mean(e <= 0.05):.0%}")


if __name__ == "__main__":
    main()
