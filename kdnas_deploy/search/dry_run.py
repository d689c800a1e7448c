"""What a search would do and roughly how long, without doing it (`kdnas-deploy search --dry-run`)."""

from __future__ import annotations

from typing import Any

from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.search.halving import plan_rungs, rung_rows
from kdnas_deploy.search.settings import SearchSettings, resolve


def dry_run(settings: SearchSettings, measure_steps: int = 3) -> dict[str, Any]:
    """What a search would do and roughly how long: space size, table coverage, and a time estimate from
    `measure_steps` distillation steps of a mid-sized candidate timed on this machine."""
    import math
    import time

    from kdnas_deploy.distill.api import distill_student
    from kdnas_deploy.data.prepare import prepare, proxy_split
    from kdnas_deploy.distill.objective import DistillConfig
    from kdnas_deploy.distill.teacher_cache import TeacherCache
    from kdnas_deploy.distill.trainer import TrainConfig, TrainProgress
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.latency import LatencyOracle

    r = resolve(settings)
    prepared = prepare(settings.teacher, DataSource.from_dict(settings.data), settings.max_length)
    lengths = settings.length_distribution(prepared.encoded.train, prepared.task.name)
    with LatencyTable(r.table_path) as table:
        oracle = LatencyOracle(table, r.profiles, settings.machines or (), lengths)
        coverage = oracle.coverage(r.space, [r.teacher_arch], settings.calibration, settings.seed)
        table_s = oracle.fill_seconds(r.space, [r.teacher_arch], settings.calibration, settings.seed)
        shapes = {p.name: oracle.shape(p.name) for p in r.profiles}
        node_lengths = {name: list(t.nodes) for name, t in oracle.traffic.items()}
    config = TrainConfig(epochs=1)

    class StepClock(TrainProgress):
        def __init__(self) -> None:
            self.times: list[float] = []

        def start(self, total_steps: int, done_steps: int) -> None:
            self.times.append(time.perf_counter())

        def step(self, loss: Any) -> None:
            float(loss)  # waits for the device, so each interval is one whole step, also on a GPU
            self.times.append(time.perf_counter())

    clock = StepClock()
    probe = r.space.enumerate()[len(r.space) // 2]
    rows = prepared.encoded.train.select(range(min(len(prepared.encoded.train), config.batch_size * (measure_steps + 1))))
    teacher = load_classifier(settings.teacher)
    pad = prepared.encoded.pad_token_id
    # As a search's candidates run: reading the teacher's outputs from its cache (a step costs the same whatever the
    # init, so `inherit` spares ranking the teacher here).
    cache = TeacherCache.for_distillation(teacher, rows, pad, DistillConfig())
    distill_student(teacher, prepared.task, pad, probe, rows, rows.select(range(1)), init="inherit",
                    train_config=config, progress=clock, teacher_cache=cache)
    seconds = sorted(b - a for a, b in zip(clock.times[1:], clock.times[2:]))  # the first step pays one-time costs
    step_s = seconds[len(seconds) // 2] if seconds else 0.0
    proxy_steps = settings.episodes * settings.top_k * math.ceil(settings.proxy / config.batch_size) * settings.proxy_epochs
    finals = len(settings.budgets) if settings.budgets else 1
    halving_steps = 0
    if settings.budgets and settings.halving_top > 1 and settings.halving_rungs > 0:
        held = len(proxy_split(prepared, settings.proxy, settings.held_out, settings.seed).held_out_rows)
        rungs = plan_rungs(settings.proxy, held, len(prepared.encoded.train), settings.halving_top, settings.halving_rungs)
        halving_steps = math.ceil(rung_rows(rungs, finals, settings.halving_top) / config.batch_size) * settings.proxy_epochs
    final_steps = (finals * math.ceil(len(prepared.encoded.train) / config.batch_size) * settings.final_epochs) if settings.final else 0
    return {
        "space": {"name": r.space.name, "architectures": len(r.space)},
        "teacher": str(r.teacher_arch),
        "table_coverage": {name: {"have": have, "need": need} for name, (have, need) in coverage.items()},
        "latency_shape": shapes, "timed_lengths": node_lengths,
        "lengths": lengths.to_dict() if lengths else None,
        "estimate_s": {"latency_table": round(table_s), "proxy_distillation": round(proxy_steps * step_s),
                       "successive_halving": round(halving_steps * step_s),
                       "final_distillation": round(final_steps * step_s)},
        "measured_step_s": round(step_s, 3), "step_measured_on": str(probe),
        "candidates": settings.episodes * settings.top_k, "training_rows": len(prepared.encoded.train),
    }
