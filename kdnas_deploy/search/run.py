"""One KD-NAS search run: settings -> latency table and teacher timing -> episodes -> finals (re-timed, halved) ->
final students -> report.

The run directory holds everything needed to resume or audit it: `run.json` (every resolved setting with the
teacher and profile hashes and the machine fingerprint), `journal.sqlite`, `choices.json` (the student chosen
per budget, with its side-by-side timing), `students/<arch>/`, `report.{md,json}` and `pareto.png`. `--resume`
reads `run.json` alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.model_folder import read_info, write_json_atomic
from kdnas_deploy.search.executors import Executor
from kdnas_deploy.search.episodes import SearchProgress, run_episodes
from kdnas_deploy.search.finals import (LATENCY_MARGIN, Budget, Choice, InterleavedTimer, budget_references,
                                       choose_finals, resolve_budgets)
from kdnas_deploy.search.halving import plan_rungs, successive_halving
from kdnas_deploy.search.journal import JOURNAL_FILE, Candidate, Journal
from kdnas_deploy.search.report import build_report, write_report
from kdnas_deploy.search.reward import RewardConfig
from kdnas_deploy.search.settings import (DEFAULT_SPEEDUP, RUN_FILE, Resolved, SearchSettings, deployment_limits,
                                          resolve)
from kdnas_deploy.search.strategies import budget_bands, make_strategy
from kdnas_deploy.teacher_config import is_recorded_teacher, teacher_config_hash

#: Ships a final student: (student folder, profiles, run folder, latency table, {profile: machine id the table's
#: rows are from}) -> {profile: the artifact's summary, or {"folder": None, "error": ...}}.
Exporter = Callable[[Path, list[Any], Path, Path, dict[str, str]], dict[str, dict[str, Any]]]

CHOICES_FILE = "choices.json"


def run_search(settings: SearchSettings, out: Path, *, resume: bool = False, progress: SearchProgress | None = None,
               latency_progress: Any = None, latency_steps: Any = None, final_progress: Any = None,
               executor: Executor | None = None, exporter: Exporter | None = None,
               confirm_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs (or resumes) a search into `out` and returns the report it writes. `executor` says where candidates
    run (default: one after another in this process); it is not a setting of the run, so a resumed run may use
    another. `exporter` ships each final student (`kdnas_deploy.pipeline.run_pipeline` passes export's): search
    itself knows nothing of export."""
    from kdnas_deploy.data.prepare import prepare
    from kdnas_deploy.distill.trainer import TrainConfig
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.evaluator import ProxyEvaluator
    from kdnas_deploy.search.latency import LatencyOracle

    if (out / RUN_FILE).exists() and not resume:
        raise KdnasError(f"{out} already holds a search run: use --resume to continue it, or another --out")
    r = resolve(settings)
    for p in r.profiles:
        p.check_runnable()
    first = r.profiles[0].name
    # The data and the teacher before the latency table: a wrong --data-dir is one line now, not after minutes of
    # timing (tokenised rows are cached, so a resumed run pays little for reading them first).
    source = DataSource.from_dict(settings.data)
    teacher = load_classifier(settings.teacher)
    prepared = prepare(settings.teacher, source, settings.max_length)
    lengths = settings.length_distribution(prepared.encoded.train, prepared.task.name)
    with LatencyTable(r.table_path) as table:
        oracle = LatencyOracle(table, r.profiles, settings.machines or (), lengths)
        elsewhere = oracle.elsewhere()
        record = _start_record(settings, r, oracle, out, resume)
        if resume and record.get("lengths") not in (None, lengths.to_dict() if lengths else None):
            raise KdnasError(f"{out}: the request lengths are not what this run started on (--lengths file changed); "
                             "start a new run")
        record["lengths"] = lengths.to_dict() if lengths else None
        record["latency_shape"] = {p.name: oracle.shape(p.name) for p in r.profiles}
        oracle.fill(r.space, extra=[r.teacher_arch, *budget_references(settings.budgets or [])],
                    calibration=settings.calibration, seed=settings.seed, progress=latency_progress,
                    on_step=latency_steps)
        teacher_ms = oracle(r.teacher_arch)
        if settings.target_ms is not None:
            config = RewardConfig({p.name: settings.target_ms for p in r.profiles}, form=settings.reward)
        else:
            config = RewardConfig.from_speedup(teacher_ms, settings.speedup or DEFAULT_SPEEDUP, form=settings.reward)
        # The data's content, not its path: a run resumed with its data moved (--data-dir) goes on only if the rows
        # are the ones it started on.
        if record.get("data_fingerprint") not in (None, prepared.data.fingerprint):
            raise KdnasError(f"{out}: the data is not what this run started on (its content changed); start a new run")
        record["data_fingerprint"] = prepared.data.fingerprint
        write_json_atomic(out / RUN_FILE, record)
        evaluate = ProxyEvaluator.from_prepared(teacher, prepared, settings.proxy, settings.held_out,
                                                init=settings.init,  # type: ignore[arg-type]
                                                train_config=TrainConfig(epochs=settings.proxy_epochs, seed=settings.seed))
        teacher_metrics = evaluate.teacher_metrics()
        budgets = resolve_budgets(settings.budgets, lambda a: oracle(a)[first]) if settings.budgets else None
        bands = budget_bands([b.ms for b in budgets], first) if budgets else ()
        strategy = make_strategy(settings.strategy, r.space, config, oracle,
                                 settings.seed, deployment_limits(settings, r.teacher_config, r.profiles), bands)
        with Journal(out / JOURNAL_FILE) as journal:
            candidates = run_episodes(strategy, journal, evaluate, oracle, config, settings.episodes, settings.top_k,
                                      progress, executor)
    rounds = settings.confirm_rounds
    if rounds and first in elsewhere:
        rounds = 0
        if confirm_status:
            confirm_status(f"picked by the table: {first}'s latencies are machine {elsewhere[first]}'s, "
                           "and re-timing the finalists here would time this one")
    halving = bool(budgets) and settings.halving_top > 1 and settings.halving_rungs > 0
    weights = oracle.traffic[first].weights() if oracle.traffic else None
    choices = chosen_finals(out, candidates, budgets, r.profiles[0], rounds, confirm_status, settings.latency_margin,
                            keep=settings.halving_top if halving else 1, weights=weights)
    if halving:
        _halve(settings, out, choices, candidates, teacher, prepared, len(evaluate.split.held_out_rows), executor,
               confirm_status)
    finals = _final_students(settings, out, choices, source, bool(budgets), r.profiles, r.table_path,
                             elsewhere, final_progress, exporter)
    report = build_report(settings, candidates, r.teacher_arch, teacher_ms, teacher_metrics["score"], config, finals)
    if budgets:
        report["choices"] = [c.to_dict() for c in choices]
    if elsewhere:
        report["latency_machines"] = elsewhere
    report["latency_shape"] = record["latency_shape"]
    write_report(out, report)
    return report


def _start_record(settings: SearchSettings, r: Resolved, oracle: Any, out: Path, resume: bool) -> dict[str, Any]:
    """Writes `run.json` (every setting, the teacher's config hash, each profile's hash and machine, the space) and
    returns it. A resumed run goes on only with the teacher and machines it started with; its data fingerprint is
    carried over for the caller to check once the data is read."""
    record: dict[str, Any] = {
        "settings": asdict(settings),
        "teacher_config_hash": teacher_config_hash(r.teacher_config),
        "profiles": {name: {"content_hash": m.profile.content_hash(), "fingerprint": m.fingerprint}
                     for name, m in oracle.models.items()},
        "space": r.space.to_dict(),
    }
    if resume:
        before = json.loads((out / RUN_FILE).read_text())
        same_teacher = is_recorded_teacher(before.get("teacher_config_hash"), r.teacher_config,
                                           before["settings"]["teacher"])
        if not same_teacher or before.get("profiles") != record["profiles"]:
            raise KdnasError(f"{out}: the teacher, profiles or machine changed since this run started; start a new "
                             "run (or, to read the first machine's timings, resume with its table and --machine)")
        if before.get("data_fingerprint") is not None:
            record["data_fingerprint"] = before["data_fingerprint"]
        if before.get("lengths") is not None:  # checked against this resume's once the data is read
            record["lengths"] = before["lengths"]
    write_json_atomic(out / RUN_FILE, record)
    return record


def _halve(settings: SearchSettings, out: Path, choices: list[Choice], candidates: list[Candidate], teacher: Any,
           prepared: Any, held_out_rows: int, executor: Executor | None,
           status: Callable[[str], None] | None) -> None:
    """Successive halving inside each budget's confirmed fits: the winner replaces the proxy's pick in `choices`."""
    from kdnas_deploy.distill.trainer import TrainConfig
    from kdnas_deploy.search.evaluator import ProxyEvaluator

    rungs = plan_rungs(settings.proxy, held_out_rows, len(prepared.encoded.train), settings.halving_top,
                       settings.halving_rungs)
    recipe = f"init-{settings.init}/epochs{settings.proxy_epochs}/seed{settings.seed}/len{settings.max_length}"
    rung_evaluators: dict[tuple[int, int], ProxyEvaluator] = {}

    def evaluate_for(rung: Any) -> Any:
        # One evaluator per rung's rows, shared by every budget: its ranked teacher and teacher cache (minutes
        # at 4x the proxy's rows) are built once, not once per budget.
        key = (rung.proxy, rung.held_out)
        if key not in rung_evaluators:
            rung_evaluators[key] = ProxyEvaluator.from_prepared(
                teacher, prepared, rung.proxy, rung.held_out, init=settings.init,  # type: ignore[arg-type]
                train_config=TrainConfig(epochs=settings.proxy_epochs, seed=settings.seed))
        return rung_evaluators[key]

    by_arch = {str(c.arch): c for c in candidates}
    with Journal(out / JOURNAL_FILE) as journal:
        for choice in choices:
            if len(choice.fits) < 2:
                continue
            result = successive_halving([by_arch[a].arch for a in choice.fits], rungs, evaluate_for, journal,
                                        recipe, executor, status=status)
            choice.halving = result.to_dict()
            if result.winner is not None:
                choice.candidate = by_arch[result.winner]


def _final_students(settings: SearchSettings, out: Path, choices: list[Choice], source: DataSource, budgeted: bool,
                    profiles: list[Any], table_path: Path, elsewhere: dict[str, str], progress: Any,
                    exporter: Exporter | None) -> list[dict[str, Any]]:
    """Each choice distilled on the full training set into `students/<arch>/` (kept across resumes, and shared by
    budgets with the same winner), then shipped by `exporter`."""
    from kdnas_deploy.distill.api import distill
    from kdnas_deploy.distill.trainer import TrainConfig

    finals: list[dict[str, Any]] = []
    if not settings.final:
        return finals
    for choice in choices:
        chosen = choice.candidate
        entry: dict[str, Any] = {**choice.to_dict(), "budget_ms": choice.budget.ms if budgeted else None}
        if chosen is not None:
            folder = out / "students" / str(chosen.arch)
            info = read_info(folder)
            if info is None:
                info = distill(settings.teacher, source, chosen.arch, folder, max_length=settings.max_length,
                               init=settings.init,  # type: ignore[arg-type]
                               train_config=TrainConfig(epochs=settings.final_epochs, seed=settings.seed),
                               progress=progress)
            entry.update(folder=str(folder), latency_ms=chosen.latency, proxy_score=chosen.score,
                         dev=info.metrics["dev"])
            if settings.export and exporter is not None:
                entry["artifacts"] = exporter(folder, profiles, out, table_path, elsewhere)
        finals.append(entry)
    return finals


def chosen_finals(out: Path, candidates: list[Candidate], budgets: list[Budget] | None, profile: Any, rounds: int,
                  status: Callable[[str], None] | None = None, margin: float = LATENCY_MARGIN,
                  keep: int = 1, weights: dict[int, float] | None = None) -> list[Choice]:
    """The student per budget, re-timed side by side unless `rounds` is 0. The choice is kept in choices.json
    for the candidates it was made from, so a resumed run distils what it chose before instead of re-timing
    (and perhaps choosing differently) after a crash between the choice and the distillation."""
    if not budgets:
        return choose_finals(candidates, None, profile.name)
    done = sorted(str(c.arch) for c in candidates if c.status == "done")
    key = {"candidates": done, "rounds": rounds, "budgets": [asdict(b) for b in budgets], "margin": margin,
           "keep": keep}
    if weights:  # under traffic: the finalists are timed at these lengths, so a choice is kept only for the same
        key["length_weights"] = {str(n): round(w, 9) for n, w in weights.items()}
    path = out / CHOICES_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if all(saved.get(k) == v for k, v in key.items()):
            return [Choice.from_dict(c, candidates) for c in saved["choices"]]
    if rounds > 0:
        with InterleavedTimer(profile, rounds, status, weights=weights) as timer:
            choices = choose_finals(candidates, budgets, profile.name, timer, margin=margin, keep=keep)
    else:
        choices = choose_finals(candidates, budgets, profile.name, keep=keep)
    write_json_atomic(path, {**key, "choices": [c.to_dict() for c in choices]})
    return choices
