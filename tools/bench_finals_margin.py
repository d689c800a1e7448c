#!/usr/bin/env python
"""How far apart two sessions of the search's final re-timing put a finalist against its reference, on this machine.

A finalist is judged by its ratio to a limit measured in the same interleaved session (the reference's fastest
round over its divisor). This times the benchmark's budget pairs with the search's own `InterleavedTimer`
(`CONFIRM_ROUNDS` rounds per session, the fastest counts) in several sessions in a row and reports, per pair:
- each session's ratio finalist / limit, their median and range;
- the re-test spread: mean |log(ratio in session i / ratio in session j)| over all pairs of sessions, which is
  what `CONFIRM_MARGIN` in kdnas_deploy/search/finals.py must cover for one session's verdict to mean something;
- how often one session's verdict (ratio <= 1) disagrees with the verdict on all sessions' median.

Run: python tools/bench_finals_margin.py [--sessions 6] [--rounds 6[,12]] [--profile cpu-int8] [--out bench-out/finals-margin]
Nothing else should run on the machine meanwhile (about 3.5 minutes on 2 cores with the default pairs).

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

from kdnas_deploy.hardware import load_profile
from kdnas_deploy.search.finals import CONFIRM_MARGIN, CONFIRM_ROUNDS, InterleavedTimer
from kdnas_deploy.space import StudentArch

#: (reference, divisor, finalist): the MNLI benchmark's borderline finalists beside their budget's reference.
PAIRS = (("L6-H384-A12-I1536", 3.0, "L3-H384-A6-I768"), ("L6-H384-A12-I1536", 3.0, "L2-H384-A2-I1536"),
         ("L4-H312-A12-I1200", 1.0, "L5-H384-A12-I384"), ("L3-H384-A12-I1536", 1.0, "L4-H384-A12-I768"))


def analyse(ms: list[dict[str, float]], pairs: tuple[tuple[str, float, str], ...]) -> list[dict]:
    rows = []
    for ref, divisor, cand in pairs:
        ratios = np.array([s[cand] / (s[ref] / divisor) for s in ms])
        pooled = float(np.median(ratios))
        retest = [abs(np.log(a / b)) for a, b in itertools.combinations(ratios, 2)]
        rows.append({"reference": ref, "divisor": divisor, "finalist": cand, "ratios": ratios.tolist(),
                     "median": pooled, "min": float(ratios.min()), "max": float(ratios.max()),
                     "retest_pct": 100 * float(np.mean(retest)),
                     "verdict_flips": int(sum((r <= 1) != (pooled <= 1) for r in ratios))})
    return rows


def replay(report_path: Path, profile_name: str, out: Path) -> None:
    from kdnas_deploy.search.finals import Choice, choose_finals, session_ratios
    from kdnas_deploy.search.run import choice_text, report_candidates

    report = json.loads(report_path.read_text())
    if "candidates" not in report:  # a benchmark record's copy: {"search-x/report.json": {"text": ...}}
        report = json.loads(next(iter(report.values()))["text"])
    candidates = report_candidates(report)
    budgets = [Choice.from_dict(c, candidates).budget for c in report["choices"]]
    start = time.perf_counter()
    with InterleavedTimer(load_profile(profile_name), progress=lambda m: print(m, flush=True)) as timer:
        choices = choose_finals(candidates, budgets, profile_name, timer)
    lines, rows = [f"Finals of {report_path} re-run on this host ({profile_name}, {CONFIRM_ROUNDS} rounds per session, "
                   f"CONFIRM_MARGIN {CONFIRM_MARGIN:.0%}), {time.perf_counter() - start:.0f} s", ""], []
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
    ap.add_argument("--replay", type=Path, help="a finished search's report.json: run its finals again here")
    args = ap.parse_args()
    if args.replay:
        return replay(args.replay, args.profile, Path(args.out))
    profile = load_profile(args.profile)
    rounds = [int(r) for r in args.rounds.split(",")]
    archs = list(dict.fromkeys(StudentArch.parse(a) for ref, _, cand in PAIRS for a in (ref, cand)))
    start = time.perf_counter()
    ms: dict[int, list[dict[str, float]]] = {r: [] for r in rounds}
    with InterleavedTimer(profile, progress=lambda m: print(m, flush=True)) as timer:
        for i in range(args.sessions):
            for r in rounds:  # alternated, so a slow spell of the machine meets every round count alike
                print(f"session {i + 1}/{args.sessions} of {r} rounds", flush=True)
                timer.rounds = r
                ms[r].append({str(a): v for a, v in timer(archs).items()})
    rows = {r: analyse(ms[r], PAIRS) for r in rounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finals-margin.json").write_text(json.dumps(
        {"profile": args.profile, "rounds": rounds, "margin": CONFIRM_MARGIN, "sessions_ms": ms,
         "rows": rows, "wall_s": time.perf_counter() - start}, indent=1))
    lines = [f"{args.sessions} sessions per round count, {args.profile}; CONFIRM_MARGIN {CONFIRM_MARGIN:.0%}", "",
             "| rounds | finalist | limit | ratio median | ratio range | re-test | one session disagrees |",
             "|---|---|---|---|---|---|---|"]
    for r in rounds:
        for row in rows[r]:
            limit = row["reference"] + (f" / {row['divisor']:g}" if row["divisor"] != 1 else "")
            lines.append(f"| {r} | {row['finalist']} | {limit} | {row['median']:.3f} | {row['min']:.3f}-{row['max']:.3f} | "
                         f"{row['retest_pct']:.1f}% | {row['verdict_flips']} of {args.sessions} |")
        lines.append(f"| {r} | **mean re-test** | | | | {sum(x['retest_pct'] for x in rows[r]) / len(rows[r]):.1f}% | |")
    (out / "finals-margin.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
