"""A search run's report: report.json (every candidate, the choices, the final students and their artifacts),
report.md and pareto.png, written from the journal and what the run decided."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.model_folder import write_json_atomic, write_text_atomic
from kdnas_deploy.search.episodes import best_candidate, prediction_quality
from kdnas_deploy.search.finals import assurance, reference_text
from kdnas_deploy.search.journal import JOURNAL_FILE, Candidate, Journal
from kdnas_deploy.search.reward import RewardConfig
from kdnas_deploy.search.settings import SearchSettings, load_settings


def _journal_part(candidates: list[Candidate]) -> dict[str, Any]:
    """The part of the report that the journal alone determines."""
    best = best_candidate(candidates)
    return {
        "candidates": [
            {"episode": c.episode, "arch": str(c.arch), "status": c.status, "latency_ms": c.latency, "score": c.score,
             "reward": c.reward, "predicted_reward": c.predicted_reward, "uncertainty": c.uncertainty,
             "wall_s": c.wall_s, "error": c.error}
            for c in candidates
        ],
        "prediction_quality": {str(k): v for k, v in prediction_quality(candidates).items()},
        "best": str(best.arch) if best else None,
    }


def report_candidates(report: dict[str, Any]) -> list[Candidate]:
    """The candidates a report.json lists (`_journal_part`), for reading a finished run without its journal."""
    from kdnas_deploy.space import StudentArch

    return [Candidate(StudentArch.parse(c["arch"]), c["episode"], c["status"], c["latency_ms"],
                      predicted_reward=c["predicted_reward"], uncertainty=c["uncertainty"], score=c["score"],
                      reward=c["reward"], wall_s=c["wall_s"], error=c["error"]) for c in report["candidates"]]


def build_report(settings: SearchSettings, candidates: list[Candidate], teacher_arch: Any, teacher_ms: dict[str, float],
                 teacher_score: float | None, config: RewardConfig, finals: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "teacher": {"path": settings.teacher, "arch": str(teacher_arch), "latency_ms": teacher_ms, "score": teacher_score},
        "reward": {"form": config.form, "targets_ms": dict(config.targets), "alpha": config.alpha, "beta": config.beta},
        "strategy": settings.strategy,
        **_journal_part(candidates),
        "finals": finals,
    }


def write_report(out: Path, report: dict[str, Any]) -> None:
    from kdnas_deploy.search.plot import plot_search

    write_json_atomic(out / "report.json", report)
    plot_search(report, out / "pareto.png")
    lines = ["# KD-NAS search report", "",
             f"Teacher `{report['teacher']['arch']}` ({report['teacher']['path']}): "
             + ", ".join(f"{p} {ms:.2f} ms" for p, ms in report["teacher"]["latency_ms"].items())
             + (f"; proxy score {report['teacher']['score']:.4f}" if report["teacher"].get("score") is not None else ""),
             f"Reward: {report['reward']['form']}, targets "
             + ", ".join(f"{p} {ms:.2f} ms" for p, ms in report["reward"]["targets_ms"].items())
             + f"; strategy {report['strategy']}.", "",
             *([f"Latencies of {', '.join(f'{p} from machine {m}' for p, m in report['latency_machines'].items())} "
                "(timed there, read from its latency table).", ""] if report.get("latency_machines") else []),
             *([f"Every latency is taken at {'; '.join(f'{p}: {shape}' for p, shape in report['latency_shape'].items())}"
                " (expected latency of a padded batch where a length distribution is named).", ""]
               if report.get("latency_shape") else []),
             "| episode | architecture | status | latency (ms) | proxy score | reward | predicted reward +- sd |",
             "|---|---|---|---|---|---|---|"]
    for c in report["candidates"]:
        lat = ", ".join(f"{v:.2f}" for v in c["latency_ms"].values())
        pred = f"{c['predicted_reward']:.4f} +- {c['uncertainty']:.4f}" if c["predicted_reward"] is not None else "-"
        score = f"{c['score']:.4f}" if c["score"] is not None else (c["error"] or "-")
        rew = f"{c['reward']:.4f}" if c["reward"] is not None else "-"
        lines.append(f"| {c['episode']} | {c['arch']} | {c['status']} | {lat} | {score} | {rew} | {pred} |")
    lines += ["", "![score against latency](pareto.png)", "", "Rank correlation of predicted and measured reward per episode: "
              + ", ".join(f"{e}: {'-' if v is None else f'{v:.2f}'}" for e, v in report["prediction_quality"].items()), ""]
    if report["best"]:
        lines.append(f"Best candidate: `{report['best']}`.")
    if report.get("choices"):
        lines += ["", "Per budget, the finalists re-timed side by side (median ms) and the choice:", ""]
        for c in report["choices"]:
            lines.append(f"- {_budget_text(c)}: " + choice_text(c))
        lines.append("")
    for final in report.get("finals", []):
        budget = f"{_budget_text(final)}: " if final["budget_ms"] is not None else ""
        if final["arch"] is None:
            lines.append(f"- {budget}no candidate within it.")
            continue
        lines.append(f"- {budget}final student `{final['arch']}` distilled on the full training set: dev "
                     + ", ".join(f"{k} {v:.4f}" for k, v in final["dev"].items()) + f" ({final['folder']}).")
        for name, art in final.get("artifacts", {}).items():
            if art["folder"] is None:
                lines.append(f"  - {name} artifact: export failed: {art['error']}")
                continue
            measured = art["latency"].get("measured")
            lines.append(f"  - {name} artifact `{art['folder']}` ({art['file']}, {art['size_mb']:.1f} MB): dev score "
                         f"{art['artifact_dev']['score']:.4f}, latency table {art['latency']['predicted_ms']:.2f} ms"
                         + (f" (machine {art['latency']['predicted_machine']})" if art["latency"].get("predicted_machine") else "")
                         + (f", measured {measured['median_ms']:.2f} ms" + (" here" if art["latency"].get("predicted_machine") else "")
                            if measured else "") + ".")
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")


def _budget_text(entry: dict[str, Any]) -> str:
    ref = reference_text(entry, quote="`")
    return f"budget {entry['budget_ms']:.2f} ms" + (f" ({ref})" if ref else "")


def choice_text(choice: dict[str, Any]) -> str:
    """One budget's finals as report.md tells them: each session's timings and the choice (a Choice's dict)."""
    arch = choice["arch"]
    if arch is None:
        return "no candidate within it"
    measured = choice.get("measured_ms") or {}
    if not measured:
        return f"`{arch}` (by the latency table)"
    sessions = choice.get("sessions") or []
    if len(sessions) > 1:  # each session re-timed the reference: say which limit each finalist was held to
        timed = "; ".join(f"session {i} (limit {s['limit_ms']:.2f} ms): " + ", ".join(f"`{a}` {ms:.2f}" for a, ms in s["measured_ms"].items())
                          for i, s in enumerate(sessions, 1))
    else:
        timed = ", ".join(f"`{a}` {ms:.2f}" for a, ms in measured.items())
    sure = assurance(choice)
    if choice["confirmed"] and sure is not None:
        margin = sure["margin"]
        verdict = (f"`{arch}` at " + ", ".join(f"{r:.3f}" for r in sure["ratios"]) + " of the limit in its "
                   + (f"{len(sure['ratios'])} sessions" if len(sure["ratios"]) > 1 else "session")
                   + (f", each at most {1 - margin:.2f} (margin {margin:.0%})" if margin is not None else "")
                   + (f"; geometric mean {sure['geomean']:.3f}, one-sided 95% upper bound {sure['upper_95']:.3f}"
                      if sure["upper_95"] is not None else ""))
    elif choice["limit_ms"] is not None:
        verdict = f"none fits {choice['limit_ms']:.2f} ms when re-timed; `{arch}` kept by the table, unconfirmed"
    else:
        verdict = f"`{arch}` (nothing near the budget to re-time)"
    return f"{timed}; chose {verdict}" + halving_text(choice)


def halving_text(choice: dict[str, Any]) -> str:
    """What successive halving decided for a budget (a Choice's dict), or "" where it did not run."""
    halving = choice.get("halving")
    if not halving or not halving.get("rungs"):
        return ""
    parts = []
    for r in halving["rungs"]:
        scores = ", ".join(f"`{a}` {s:.4f}" if s is not None else f"`{a}` failed" for a, s in r["scores"].items())
        gap = ""
        if "gap_points" in r:
            gap = f"; gap {r['gap_points']:.2f} points" + (f", standard error {r['gap_se_points']:.2f}" if "gap_se_points" in r else "")
        parts.append(f"rung {r['rung']} ({r['proxy']} rows, {r['held_out']} held out): {scores}{gap}")
    return f". Successive halving over {len(choice.get('fits') or [])} fits: " + "; ".join(parts) + f"; won by `{halving['winner']}`"


def regenerate_report(run_dir: Path) -> dict[str, Any]:
    """Rebuilds report.md from report.json plus the journal's current contents."""
    path = run_dir / "report.json"
    if not path.is_file():
        load_settings(run_dir)  # a clear error for a folder that is not a run
        raise KdnasError(f"{run_dir} has no report yet: the search has not finished an episode loop")
    report = json.loads(path.read_text())
    with Journal(run_dir / JOURNAL_FILE) as journal:
        candidates = journal.candidates()
    report.update(_journal_part(candidates))
    write_report(run_dir, report)
    return report
