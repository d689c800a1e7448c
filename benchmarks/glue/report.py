"""The rules applied to what the stages made: per-seed paired differences, latency verdicts, the replay, speed at
97%; the scoreboard and details written into docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.glue.common import PINNED_COMMIT, Bench, Task, plan_commits
from benchmarks.glue.finals import arms, compare_record, latency_pairs, result_path, unit_name
from kdnas_deploy.model_folder import write_json_atomic
from kdnas_deploy.util.stats import mean_t_interval


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """The mean and its two-sided `confidence` t-interval."""
    return mean_t_interval(values, 1 - (1 - confidence) / 2)


def task_results(bench: Bench, task: Task) -> dict[str, Any]:
    from kdnas_deploy.latency.compare import Comparison

    rules = bench.plan["rules"]
    res: dict[str, Any] = {"task": task.name, "primary": task.cfg.get("primary", False)}
    teacher = result_path(task, "teacher")
    res["teacher_dev"] = json.loads(teacher.read_text())["dev"] if teacher.is_file() else None
    if not all((task.out / f"search-{s}.json").is_file() for s in ("kdnas", "random")):
        # The arms are the searches' picks: nothing to score until both have picked.
        res["stage"] = "searching" if (task.teacher / "kdnas.json").is_file() else "training the teacher"
        return res
    res["stage"] = "finals"
    scores = {p.stem: json.loads(p.read_text()) for p in (task.out / "results").glob("*.json")} if (task.out / "results").is_dir() else {}
    everyone = arms(bench, task)
    res["arms"] = [{"role": a.role, "budget": a.budget, "label": a.label, "arch": a.arch,
                    "dev": {s: 100 * scores[unit_name(a.arch, s)]["dev"] for s in a.seeds if unit_name(a.arch, s) in scores}}
                   for a in everyone]
    comparisons = {}
    for pair in latency_pairs(bench, task):
        path = compare_record(task, pair)
        if path.is_file():
            c = Comparison.from_dict(json.loads(path.read_text()), str(path))
            comparisons[pair] = c.summary(rules["latency"]["tolerance"], rules["latency"]["sessions"], rules["latency"]["min_hours"])
    res["latency"] = comparisons
    pairs = []
    by = {(a.role, a.budget): a for a in everyone}
    for label, hand in bench.plan["handcrafted"].items():
        kd = by.get(("kdnas", hand))
        if kd is None:
            pairs.append({"budget": hand, "handcrafted": label, "kdnas": None, "verdict": "no pick"})
            continue
        hand_dev = next(a for a in res["arms"] if a["role"] == "handcrafted" and a["arch"] == hand)["dev"]
        kd_dev = next(a for a in res["arms"] if a["role"] == "kdnas" and a["budget"] == hand)["dev"]
        seeds = [s for s in kd_dev if s in hand_dev]
        diffs = [kd_dev[s] - hand_dev[s] for s in seeds]
        entry: dict[str, Any] = {"budget": hand, "handcrafted": label, "kdnas": kd.arch, "seeds": seeds, "differences": diffs}
        if kd.arch == hand:
            lat = {"verdict": "within", "reason": "the same architecture"}
        else:
            lat = comparisons.get(f"{kd.arch}__vs__{hand}", {"verdict": "pending", "reason": "no session yet"})
        entry["latency"] = lat
        if diffs:
            mean, lo, hi = t_interval(diffs, rules["score"]["confidence"])
            entry.update(mean=mean, ci95=[lo, hi])
        complete = len(seeds) == len(task.cfg["seeds"])
        if not complete or lat.get("verdict") in ("pending", "too little evidence"):
            entry["verdict"] = "pending"
        elif lat["verdict"] != "within":
            entry["verdict"] = "missed (latency)"
        else:
            met = entry["mean"] >= rules["score"]["min_mean_points"] and entry["ci95"][0] is not None and entry["ci95"][0] > 0
            entry["verdict"] = "met" if met else "missed"
            entry["strict"] = entry["ci95"][0] is not None and entry["ci95"][0] > rules["score"]["min_mean_points"]
        pairs.append(entry)
    res["pairs"] = pairs
    # Speed at 97%: seed-mean dev against the teacher's, speedup from the sessions against the teacher.
    speed = []
    if res["teacher_dev"] is not None:
        teacher_dev = 100 * res["teacher_dev"]
        for arch in sorted({a["arch"] for a in res["arms"]}):
            devs = [d for a in res["arms"] if a["arch"] == arch for d in a["dev"].values()]
            devs = list({round(d, 6): d for d in devs}.values()) if devs else []
            c = comparisons.get(f"{arch}__vs__teacher")
            if not devs or c is None:
                continue
            speed.append({"arch": arch, "dev_mean": sum(devs) / len(devs), "kept": sum(devs) / len(devs) / teacher_dev,
                          "speedup": 1 / c["geomean_ratio"], "speedup_ci95": [1 / c["upper_95"], 1 / c["lower_95"]]
                          if c["upper_95"] else None, "sessions": c["sessions"]})
    res["speed"] = speed
    # The verdict waits for every seed of every arm (the seed mean decides who keeps 97%) and every pair against the
    # teacher to have the latency rule's sessions: a verdict on part of the data could flip.
    res["speed_complete"] = (res["teacher_dev"] is not None
                             and all(len(r["dev"]) == len(a.seeds) for r, a in zip(res["arms"], everyone))
                             and all(comparisons.get(pair, {}).get("verdict") in ("within", "not shown")
                                     for pair in latency_pairs(bench, task) if pair.endswith("__vs__teacher")))
    qualifying = [s for s in speed if s["kept"] >= rules["speed"]["keep"]]
    res["speed_at_97"] = max(qualifying, key=lambda s: s["speedup"]) if qualifying else None
    if (task.out / "replay.json").is_file():
        res["replay"] = json.loads((task.out / "replay.json").read_text())
    return res


def scoreboard(bench: Bench, results: dict[str, Any]) -> str:
    """The table docs/benchmarks.md opens with."""
    plan = bench.plan
    commits = plan_commits()
    commit = (f"`{commits[0]}`" + (f", amended in {', '.join(f'`{c}`' for c in commits[1:])}" if len(commits) > 1 else "")
              if commits else "(uncommitted)")
    rows = []
    for name, r in results.items():
        # Where a row's numbers can be re-derived: the task's records, written by the driver at the pinned commit.
        run = f"`benchmarks/glue/record/{name}/`, code `{PINNED_COMMIT}`"
        before = len(rows)
        for p in r.get("pairs", []):
            value = (f"{p['mean']:+.2f} points, 95% CI [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}] over {len(p['seeds'])} seeds"
                     if p.get("ci95") and p["ci95"][0] is not None else f"{len(p.get('seeds', []))} of {len(bench_seeds(bench, name))} seeds")
            lat = p.get("latency", {})
            latency_text = (f"; latency ratio {lat['geomean_ratio']:.3f}, upper bound {lat['upper_95']:.3f}"
                            if lat.get("upper_95") else f"; latency {lat.get('verdict', 'pending')}")
            rows.append((f"{name.upper()}: KD-NAS `{p.get('kdnas')}` against {p['handcrafted']} `{p['budget']}`, "
                         ">= +1.5 points at equal latency", "score/1 + equal-latency/1", value + latency_text, p["verdict"],
                         run))
        for budget, rep in (r.get("replay") or {}).items():
            for n in ("16", "32"):
                c = rep["counts"].get(n)
                if c:
                    d = c["regret_difference"]
                    rows.append((f"{name.upper()}: KD-NAS ahead of random at {n} candidates (pool of `{budget}`)", "replay/1",
                                 f"regret random - KD-NAS {100 * d['random_minus_kdnas']:+.2f} points, 95% CI "
                                 f"[{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]", "met" if c["kdnas_ahead"] else "missed",
                                 run))
        s97 = r.get("speed_at_97")
        if r.get("speed"):
            value = f"{s97['speedup']:.2f}x (`{s97['arch']}`, {100 * s97['kept']:.1f}% kept)" if s97 else "no student keeps 97%"
            verdict = "met" if s97 and s97["speedup"] >= plan["rules"]["speed"]["target_speedup"] else "missed"
            if not r.get("speed_complete"):
                value, verdict = f"so far {value}", "pending"
            rows.append((f"{name.upper()}: speedup over the teacher at >= 97% of its score, >= 2.5x", "speed-at-97/1",
                         value, verdict, run))
        if len(rows) == before:  # a task still searching: say so rather than leave it off the board
            rows.append((f"{name.upper()}: the same targets ({len(bench_seeds(bench, name))} seeds)", "all", r.get("stage", ""),
                         "pending", run))
    lines = ["| target | rule | measured | verdict | run |", "|---|---|---|---|---|"]
    lines += ([f"| {t} | {rule} | {v} | {verdict} | {run} |" for t, rule, v, verdict, run in rows]
              or ["| (no results yet) | | | pending | |"])
    return "\n".join([f"Plan: `benchmarks/glue/plan.toml` (version {plan['version']}, "
                      f"rules {plan['rule_versions']}), committed in {commit}, before any result.", "", *lines])


def details(results: dict[str, Any]) -> str:
    """Per task: every arm's dev scores per seed, the latency comparisons, and the replay's mean regrets."""
    out: list[str] = []
    for name, r in results.items():
        out += [f"### {name.upper()}", ""]
        if r.get("teacher_dev") is not None:
            out += [f"Teacher (MiniLM-L6 fine-tuned), int8 artifact dev score {100 * r['teacher_dev']:.2f}.", ""]
        if r.get("arms"):
            out += ["| arm | architecture | dev score per seed (int8) | mean |", "|---|---|---|---|"]
            for a in r["arms"]:
                devs = a["dev"]
                per = ", ".join(f"s{s}: {v:.2f}" for s, v in sorted(devs.items())) or "pending"
                mean = f"{sum(devs.values()) / len(devs):.2f}" if devs else ""
                out.append(f"| {a['label']} | `{a['arch']}` | {per} | {mean} |")
            out.append("")
        if r.get("latency"):
            out += ["| comparison (A vs B, int8) | sessions | span h | session ratios | geometric mean | one-sided 95% upper | verdict (<= 1.03) |",
                    "|---|---|---|---|---|---|---|"]
            for pair, c in r["latency"].items():
                upper = f"{c['upper_95']:.3f}" if c["upper_95"] else ""
                out.append(f"| {pair.replace('__vs__', ' vs ')} | {c['sessions']} | {c['span_hours']:.2f} | "
                           f"{', '.join(f'{x:.3f}' for x in c['ratios'])} | {c['geomean_ratio']:.3f} | {upper} | {c['verdict']} |")
            out.append("")
        for budget, rep in (r.get("replay") or {}).items():
            out += [f"Replay on the pool of `{budget}` ({rep['pool']} architectures, best proxy score {rep['pool_best']:.4f}):", "",
                    "| candidates | mean regret KD-NAS | mean regret random | random - KD-NAS (95% CI) | KD-NAS ahead |",
                    "|---|---|---|---|---|"]
            for n, c in rep["counts"].items():
                d = c["regret_difference"]
                out.append(f"| {n} | {100 * c['mean_regret']['kdnas']:.2f} | {100 * c['mean_regret']['random']:.2f} | "
                           f"{100 * d['random_minus_kdnas']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}] | "
                           f"{'yes' if c['kdnas_ahead'] else 'no'} |")
            out.append("")
    return "\n".join(out)


MARKER = "<!-- scoreboard: written by python -m benchmarks.glue -->"


def write_page(page: Path, board: str, detail: str) -> None:
    """Replaces the generated block of the page; the hand-written rest stays."""
    from kdnas_deploy.model_folder import write_text_atomic

    end = "<!-- /scoreboard -->"
    text = page.read_text()
    # The block's opening marker as written by this module, or by the single-file tool it was before.
    start = next((m for m in (MARKER, "<!-- scoreboard: written by tools/bench_glue.py -->") if m in text), MARKER)
    if start not in text or end not in text:
        sys.exit(f"{page} has no generated block ({MARKER} ... {end})")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    block = f"{board}\n\n## Details\n\n{detail}" if detail.strip() else board
    write_text_atomic(page, f"{head}{start}\n{block}\n{end}{tail}")


def bench_seeds(bench: Bench, name: str) -> list[int]:
    return bench.plan["tasks"][name]["seeds"]


def report_stage(bench: Bench, tasks: list[Task]) -> dict[str, Any]:
    results = {t.name: task_results(bench, t) for t in tasks}
    write_json_atomic(bench.work / "results.json", results)
    return results
