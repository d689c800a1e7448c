#!/usr/bin/env python
"""How far apart two sessions of the search's final re-timing put a finalist against its reference, on this machine.

A finalist is judged by its ratio to a limit measured in the same interleaved session. This times the
benchmark's budget pairs with the search's own `InterleavedTimer` (`CONFIRM_ROUNDS` rounds per session) in
several sessions in a row, keeps every round, and reports per pair and per estimator of the ratio:
- `fastest`: the finalist's fastest round over the reference's fastest round (over its divisor);
- `paired`: the median over rounds of the finalist's round over the reference's same round (`paired_ratio`);
each session's ratio, their median and range; the re-test spread, mean |log(ratio in session i / ratio in session
j)| over all pairs of sessions, which is what `LATENCY_MARGIN` in kdnas_deploy/search/finals.py must cover for one
session's verdict to mean something; and how often one session's verdict (ratio <= 1) disagrees with the verdict
on all sessions' median.

Run: python tools/bench_finals_margin.py [--sessions 6] [--rounds 6[,12]] [--profile cpu-int8] [--out bench-out/finals-margin]
Nothing else should run on the machine meanwhile (about 3.5 minutes on 2 cores with the default pairs).

`--artifacts DIR --pairs REF[/DIV]:CAND,...` times finished artifacts instead of random-weight graphs: the
folders DIR/<arch><--suffix> (a benchmark's `artifacts/`, suffix `-s0-cpu-int8`), each graph as its card names it.

`--replay REPORT` instead runs a finished search's finals again on this host, with the rule as it is now: its
candidates and budgets from its report.json (or a benchmark record's copy of one), every budget's finalists
re-timed here. It prints each budget's sessions and choice, and which finalists a second session judged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from kdnas_deploy.artifact.runtime import read_card
from kdnas_deploy.hardware import load_profile
from kdnas_deploy.latency.timing import fastest, interleaved_rounds, time_graph
from kdnas_deploy.search.finals import LATENCY_MARGIN, CONFIRM_ROUNDS, Budget, InterleavedTimer, limit_ratio
from kdnas_deploy.space import StudentArch

#: (reference, divisor, finalist): the MNLI benchmark's borderline finalists beside their budget's reference.
PAIRS = (("L6-H384-A12-I1536", 3.0, "L3-H384-A6-I768"), ("L6-H384-A12-I1536", 3.0, "L2-H384-A2-I1536"),
         ("L4-H312-A12-I1200", 1.0, "L5-H384-A12-I384"), ("L3-H384-A12-I1536", 1.0, "L4-H384-A12-I768"))


#: Estimators of a finalist's ratio to its limit from one session's rounds ({arch: ms per round}): the fastest rounds'
#: ratio, which the finals judged by before 2026-12-03, and the finals' own rule now (`limit_ratio`, paired rounds).
ESTIMATORS = {
    "fastest": lambda s, ref, div, cand: fastest(s[cand]) / (fastest(s[ref]) / div),
    "paired": lambda s, ref, div, cand: limit_ratio(Budget(0.0, ref, div), s, cand),
}


def parse_pairs(text: str) -> tuple[tuple[str, float, str], ...]:
    """"REF[/DIV]:CAND,..." as (reference, divisor, finalist) triples."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        limit, _, cand = item.partition(":")
        ref, _, div = limit.partition("/")
        out.append((str(StudentArch.parse(ref)), float(div) if div else 1.0, str(StudentArch.parse(cand))))
    return tuple(out)


def analyse(sessions: list[dict[str, list[float]]], pairs: tuple[tuple[str, float, str], ...]) -> list[dict]:
    """Per pair and estimator: each session's ratio and their agreement (module docstring)."""
    rows = []
    for ref, divisor, cand in pairs:
        for name, estimate in ESTIMATORS.items():
            ratios = np.array([estimate(s, ref, divisor, cand) for s in sessions])
            pooled = float(np.median(ratios))
            retest = [abs(np.log(a / b)) for a, b in itertools.combinations(ratios, 2)]
            rows.append({"reference": ref, "divisor": divisor, "finalist": cand, "estimator": name,
                         "ratios": ratios.tolist(), "median": pooled, "min": float(ratios.min()),
                         "max": float(ratios.max()), "retest_pct": 100 * float(np.mean(retest)),
                         "verdict_flips": int(sum((r <= 1) != (pooled <= 1) for r in ratios))})
    return rows


class ArtifactTimer:
    """Finished artifacts timed in interleaved rounds, as the benchmark's timing stage times them."""

    def __init__(self, folder: Path, suffix: str, profile: object, rounds: int) -> None:
        self.folder, self.suffix, self.profile, self.rounds = folder, suffix, profile, rounds
        self.graphs: dict[StudentArch, Path] = {}

    def __call__(self, archs: list[StudentArch]) -> dict[StudentArch, list[float]]:
        for a in archs:
            if a not in self.graphs:
                target = self.folder / f"{a}{self.suffix}"
                graph = target / read_card(target)["file"]
                if not graph.is_file():
                    raise SystemExit(f"error: {graph} is missing")
                self.graphs[a] = graph
        return interleaved_rounds(archs, lambda a, r: time_graph(self.graphs[a], self.profile, seed=r, sessions=1).median_ms,
                                  self.rounds)

    def __enter__(self) -> "ArtifactTimer":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def replay(report_path: Path, profile_name: str, out: Path) -> None:
    from kdnas_deploy.search.finals import Choice, choose_finals, session_ratios
    from kdnas_deploy.search.report import choice_text, report_candidates

    report = json.loads(report_path.read_text())
    if "candidates" not in report:  # a benchmark record's copy: {"search-x/report.json": {"text": ...}}
        report = json.loads(next(iter(report.values()))["text"])
    candidates = report_candidates(report)
    budgets = [Choice.from_dict(c, candidates).budget for c in report["choices"]]
    start = time.perf_counter()
    with InterleavedTimer(load_profile(profile_name), progress=lambda m: print(m, flush=True)) as timer:
        choices = choose_finals(candidates, budgets, profile_name, timer)
    lines, rows = [f"Finals of {report_path} re-run on this host ({profile_name}, {CONFIRM_ROUNDS} rounds per session, "
                   f"LATENCY_MARGIN {LATENCY_MARGIN:.0%}), {time.perf_counter() - start:.0f} s", ""], []
    for choice, before in zip(choices, report["choices"]):
        d = choice.to_dict()
        finalists = dict.fromkeys(a for s in d["sessions"] for a in s["measured_ms"] if a != d["reference"])
        twice = {a: rs for a in finalists if len(rs := session_ratios(d["sessions"], a)) > 1}
        rows.append({**d, "recorded_arch": before["arch"], "judged_twice": twice})
        lines += [f"- budget {d['budget_ms']:.2f} ms ({d['reference']} / {d['divisor']:g}); recorded pick "
                  f"`{before['arch']}`; here: {choice_text(d)}",
                  "  - judged on two sessions: " + (", ".join(f"`{a}` " + " then ".join(f"{r:.3f}" for r in rs)
                                                           for a, rs in twice.items()) or "none")]
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps({"report": str(report_path), "choices": rows}, indent=1))
    (out / "replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--profile", default="cpu-int8")
    ap.add_argument("--out", default="bench-out/finals-margin")
    ap.add_argument("--rounds", default=str(CONFIRM_ROUNDS),
                    help="rounds per session, or several (6,12) to compare, their sessions alternated")
    ap.add_argument("--pairs", help="REF[/DIV]:CAND,... (default: the MNLI benchmark's borderline finalists)")
    ap.add_argument("--artifacts", type=Path, help="time the artifacts DIR/<arch><suffix> instead of random-weight graphs")
    ap.add_argument("--suffix", default="-s0-cpu-int8", help="with --artifacts: what follows the architecture in a folder name")
    ap.add_argument("--replay", type=Path, help="a finished search's report.json: run its finals again here")
    args = ap.parse_args()
    if args.replay:
        return replay(args.replay, args.profile, Path(args.out))
    profile = load_profile(args.profile)
    rounds = [int(r) for r in args.rounds.split(",")]
    pairs = parse_pairs(args.pairs) if args.pairs else PAIRS
    archs = list(dict.fromkeys(StudentArch.parse(a) for ref, _, cand in pairs for a in (ref, cand)))
    start = time.perf_counter()
    samples: dict[int, list[dict[str, list[float]]]] = {r: [] for r in rounds}
    timer = (ArtifactTimer(args.artifacts, args.suffix, profile, rounds[0]) if args.artifacts
             else InterleavedTimer(profile, progress=lambda m: print(m, flush=True)))
    with timer:
        for i in range(args.sessions):
            for r in rounds:  # alternated, so a slow spell of the machine meets every round count alike
                print(f"session {i + 1}/{args.sessions} of {r} rounds", flush=True)
                timer.rounds = r
                samples[r].append({str(a): v for a, v in timer(archs).items()})
    rows = {r: analyse(samples[r], pairs) for r in rounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finals-margin.json").write_text(json.dumps(
        {"profile": args.profile, "rounds": rounds, "margin": LATENCY_MARGIN, "graphs": str(args.artifacts or "random weights"),
         "sessions_rounds_ms": samples, "rows": rows, "wall_s": time.perf_counter() - start}, indent=1))
    lines = [f"{args.sessions} sessions per round count, {args.profile}, "
             f"{f'artifacts of {args.artifacts}' if args.artifacts else 'random-weight graphs'}; "
             f"LATENCY_MARGIN {LATENCY_MARGIN:.0%}", "",
             "| rounds | estimator | finalist | limit | ratio median | ratio range | re-test | one session disagrees |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        for row in rows[r]:
            limit = row["reference"] + (f" / {row['divisor']:g}" if row["divisor"] != 1 else "")
            lines.append(f"| {r} | {row['estimator']} | {row['finalist']} | {limit} | {row['median']:.3f} | "
                         f"{row['min']:.3f}-{row['max']:.3f} | {row['retest_pct']:.1f}% | {row['verdict_flips']} of {args.sessions} |")
        for name in ESTIMATORS:
            mine = [x["retest_pct"] for x in rows[r] if x["estimator"] == name]
            lines.append(f"| {r} | {name} | **mean re-test** | | | | {sum(mine) / len(mine):.1f}% | |")
    (out / "finals-margin.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
