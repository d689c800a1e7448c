"""One KD-NAS search run: settings -> latency table and teacher timing -> episodes -> final student -> report.

The run directory holds everything needed to resume or audit it: `run.json` (every resolved setting with the
teacher and profile hashes and the machine fingerprint), `journal.sqlite`, `choices.json` (the student chosen
per budget, with its side-by-side timing), `students/<arch>/`, `report.{md,json}` and `pareto.png`. `--resume`
reads `run.json` alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from kdnas_deploy.data import DataSource
from kdnas_deploy.distill import DEFAULT_INIT, INITS
from kdnas_deploy.errors import KdnasError
from kdnas_deploy.model_folder import model_ref, read_info, write_json_atomic, write_text_atomic
from kdnas_deploy.search.executors import Executor
from kdnas_deploy.search.episodes import SearchProgress, best_candidate, prediction_quality, run_episodes
from kdnas_deploy.search.finals import (CONFIRM_ROUNDS, LATENCY_MARGIN, Budget, Choice, InterleavedTimer, assurance,
                                       budget_references, choose_finals, parse_budget, reference_text, resolve_budgets,
                                       session_ratios)
from kdnas_deploy.search.halving import HALVING_RUNGS, HALVING_TOP, plan_rungs, rung_rows, successive_halving
from kdnas_deploy.search.journal import JOURNAL_FILE, Candidate, Journal
from kdnas_deploy.search.reward import RewardConfig
from kdnas_deploy.search.strategies import STRATEGIES, Allowed, budget_bands, make_strategy
from kdnas_deploy.teacher_config import is_recorded_teacher, teacher_config_hash

RUN_FILE = "run.json"
CHOICES_FILE = "choices.json"
#: Without --target-ms or --speedup the search aims at the paper's CPU operating point.
DEFAULT_SPEEDUP = 3.0


@dataclass
class SearchSettings:
    teacher: str
    data: dict[str, Any]
    max_length: int = 128
    hw: list[str] = field(default_factory=lambda: ["cpu"])
    space: str = "auto"
    table: str | None = None
    seed: int = 0
    strategy: str = "kdnas"
    episodes: int = 4
    top_k: int = 4
    proxy: int = 2000
    held_out: int | None = None
    proxy_epochs: int = 3
    #: How candidates and final students start from the teacher (one of kdnas_deploy.distill.INITS).
    init: str = DEFAULT_INIT
    target_ms: float | None = None
    speedup: float | None = None
    reward: Literal["soft", "hard"] = "soft"
    calibration: int = 12
    final_epochs: int = 3
    final: bool = True
    #: Export each final student for every profile searched (artifacts/<arch>-<profile>/).
    export: bool = True
    max_params: int | None = None
    #: Largest artifact allowed, in MB, for every profile searched (int8 and fp16 artifacts weigh less than fp32).
    max_mb: float | None = None
    #: Latency budgets on the first profile: ms, an architecture ("as fast as L3-H384-A12-I1536") or a fraction of
    #: one ("L6-H384-A12-I1536/3"). Each gets its band of the search and one final student (the best proxy score
    #: within it, confirmed by re-timing).
    budgets: list[float | str] | None = None
    #: Interleaved rounds that re-time each budget's finalists before the pick; 0 picks by the table alone.
    confirm_rounds: int = CONFIRM_ROUNDS
    #: A final student must time at most (1 - latency_margin) of its budget in each of two side-by-side sessions.
    latency_margin: float = LATENCY_MARGIN
    #: Successive halving before each budget's pick: its `halving_top` best confirmed fits are distilled again on
    #: 2x, then the best half on 4x the proxy's rows (`halving_rungs` rungs), each scored on as many times the
    #: held-out rows. 1 (or 0 rungs) picks the best proxy score as the search ranked it.
    halving_top: int = HALVING_TOP
    halving_rungs: int = HALVING_RUNGS
    #: Fingerprint ids of other machines in the table whose timings the search reads for the profiles they timed
    #: (a deployment target profiled there, a search run here). Their latencies are never measured from here, and
    #: finalists on them are picked by the table, since re-timing them here would time the wrong machine.
    machines: list[str] | None = None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default, for the command line's flags (defaults are written here once)."""
        return {name: f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
                for name, f in cls.__dataclass_fields__.items() if name not in ("teacher", "data")}

    @classmethod
    def validated(cls, values: dict[str, Any], source: str) -> SearchSettings:
        """Settings from plain data (a --config file, a run.json), each value checked against its type first: a
        string where a number belongs is one line naming the setting, not a TypeError half-way through a run."""
        from pydantic import TypeAdapter, ValidationError

        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise KdnasError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(cls.__dataclass_fields__))}")
        try:
            return TypeAdapter(cls).validate_python(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise KdnasError(f"{source}: {where or 'settings'}: {err['msg'].removeprefix('Value error, ')}") from None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise KdnasError(f"unknown strategy {self.strategy!r}: use {', '.join(STRATEGIES)}")
        if self.target_ms is not None and self.speedup is not None:
            raise KdnasError("give --target-ms or --speedup, not both")
        if self.episodes < 1 or self.top_k < 1:
            raise KdnasError("--episodes and --top-k must be at least 1")
        if not self.hw:
            raise KdnasError("give at least one --hw profile")
        if self.reward not in ("soft", "hard"):
            raise KdnasError(f"--reward {self.reward!r}: use soft or hard")
        if self.speedup is not None and not (self.speedup > 0 and math.isfinite(self.speedup)):
            raise KdnasError(f"--speedup must be a positive number, got {self.speedup}")
        if self.target_ms is not None and not (self.target_ms > 0 and math.isfinite(self.target_ms)):
            raise KdnasError(f"--target-ms must be a positive number of milliseconds, got {self.target_ms}")
        if self.max_length < 8 or self.proxy < 2 or self.proxy_epochs < 1 or self.final_epochs < 1 or self.calibration < 0:
            raise KdnasError("max_length must be at least 8, proxy at least 2, proxy_epochs and final_epochs at least 1, "
                             "calibration 0 or more")
        if self.held_out is not None and self.held_out < 1:
            raise KdnasError(f"--held-out must be at least 1, got {self.held_out}")
        if self.max_mb is not None and not self.max_mb > 0:
            raise KdnasError(f"--max-mb must be positive, got {self.max_mb}")
        if self.budgets is not None:
            if not self.budgets:
                raise KdnasError("--budgets needs at least one budget")
            self.budgets = [parse_budget(b) for b in self.budgets]
        if self.init not in INITS:
            raise KdnasError(f"--init {self.init!r}: use {', '.join(INITS)}")
        if self.confirm_rounds < 0:
            raise KdnasError(f"--confirm-rounds must be 0 or more, got {self.confirm_rounds}")
        if self.halving_top < 1 or self.halving_rungs < 0:
            raise KdnasError(f"--halving-top must be at least 1 and --halving-rungs 0 or more, got {self.halving_top} and "
                             f"{self.halving_rungs}")
        if not (0 <= self.latency_margin < 0.5):
            raise KdnasError(f"--latency-margin must be a fraction from 0 to 0.5 (0.03 is 3%), got {self.latency_margin}")


def settings_from(flags: dict[str, Any], data: DataSource, config: Path | None = None) -> SearchSettings:
    """Settings from a `--config` TOML overlaid with `flags`, the settings the user gave on the command line (the CLI
    passes only those, whatever their value); with no data options anywhere, the data recorded in the teacher's
    kdnas.json."""
    from kdnas_deploy.distill.api import source_from_teacher

    values = {**(read_config(config) if config else {}), **flags}
    source = f"--config {config}" if config else "search settings"
    if not values.get("teacher"):
        raise KdnasError("give --teacher (or --resume with the --out of an earlier run)")
    SearchSettings.validated({**values, "data": {}}, source)  # every value's type, before the teacher's data is read
    if values.get("space", "auto") != "auto":
        values["space"] = str(Path(values["space"]).resolve())
    merged = DataSource.from_dict({**values.get("data", {}), **data.to_dict()})
    values["data"] = source_from_teacher(model_ref(values["teacher"]), merged).to_dict()
    return SearchSettings.validated(values, source)


def read_config(path: Path) -> dict[str, Any]:
    """A `--config` TOML: top-level keys are SearchSettings fields; `[data]` holds the data options."""
    from kdnas_deploy.files import read_toml

    raw = read_toml(path, "--config")
    fields = set(SearchSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise KdnasError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    data = raw.get("data", {})
    if not isinstance(data, dict) or not all(
            isinstance(v, str) or (k == "text_columns" and isinstance(v, list) and all(isinstance(c, str) for c in v))
            for k, v in data.items()):
        raise KdnasError(f"--config {path}: [data] must be a table of strings (task, data_dir, train_file, dev_file, "
                         "label_column; text_columns a list of strings)")
    for key in ("teacher", "space", "table"):
        if key in raw and not isinstance(raw[key], str):
            raise KdnasError(f"--config {path}: {key} must be a string, got {raw[key]!r}")
    return raw


def load_settings(run_dir: Path) -> SearchSettings:
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise KdnasError(f"{run_dir} is not a search run directory (no {RUN_FILE}); start one with kdnas-deploy search")
    from kdnas_deploy.files import read_text_file

    try:
        saved = json.loads(read_text_file(path, "run file"))["settings"]
    except (ValueError, KeyError, TypeError):
        raise KdnasError(f"{path}: damaged (not the JSON run.json a search writes); start a new run in another --out") from None
    if not isinstance(saved, dict):
        raise KdnasError(f"{path}: damaged (its settings are not an object); start a new run in another --out")
    saved.setdefault("init", "inherit")  # runs begun before the setting existed inherited the first units
    return SearchSettings.validated(saved, str(path))


@dataclass
class _Resolved:
    teacher_arch: Any
    teacher_config: Any
    space: Any
    profiles: list[Any]
    table_path: Path


def _resolve(settings: SearchSettings) -> _Resolved:
    """Teacher, space, profiles and table a run's settings name: what both the run and the dry run need."""
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.table import default_table_path
    from kdnas_deploy.space import SearchSpace, StudentArch
    from kdnas_deploy.teacher_config import load_teacher_config

    settings.teacher = model_ref(settings.teacher)
    teacher_config = load_teacher_config(settings.teacher)
    return _Resolved(StudentArch.from_config(teacher_config), teacher_config, SearchSpace.resolve(settings.space, teacher_config),
                     [load_profile(h) for h in settings.hw], Path(settings.table) if settings.table else default_table_path())


def deployment_limits(settings: SearchSettings, teacher_config: Any, profiles: list[Any]) -> Allowed | None:
    """`--max-params` and `--max-mb` as one predicate, sized with the teacher's vocabulary and labels (a student
    inherits both) and, for the artifact, the precision of every profile searched."""
    from kdnas_deploy.latency.graph import artifact_megabytes

    if settings.max_params is None and settings.max_mb is None:
        return None
    shape = {"vocab_size": teacher_config.vocab_size, "max_positions": teacher_config.max_position_embeddings,
             "type_vocab": teacher_config.type_vocab_size, "num_labels": teacher_config.num_labels}

    def allowed(arch: Any) -> bool:
        if settings.max_params is not None and arch.parameter_count(**shape) > settings.max_params:
            return False
        return settings.max_mb is None or all(
            artifact_megabytes(arch, p.precision, **shape) <= settings.max_mb for p in profiles)

    return allowed


def export_finals(folder: Path, profiles: list[Any], out: Path, table: Path,
                  status: Callable[[str], None] | None = None,
                  machines: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The final student's artifact for each profile; a failed export (for example an int8 accuracy drop over the
    limit) is recorded in the report instead of ending a run whose students are already distilled. `machines`
    (profile name -> fingerprint id) are the machines whose table rows the search read: the cards' table latency
    is theirs too."""
    from kdnas_deploy.artifact.export import export_artifact
    from kdnas_deploy.artifact.runtime import read_card

    results: dict[str, dict[str, Any]] = {}
    for profile in profiles:
        target = out / "artifacts" / f"{folder.name}-{profile.name}"
        try:
            card = read_card(target) if target.is_dir() else None
        except KdnasError:
            card = None
        try:
            if card is None:  # a resumed run keeps artifacts it already exported
                card = export_artifact(folder, profile, target, table=table, search_run=out, overwrite=True,
                                       status=status, machine=(machines or {}).get(profile.name)).card
        except KdnasError as exc:
            results[profile.name] = {"folder": None, "error": str(exc)}
            continue
        results[profile.name] = {"folder": str(target), "file": card["file"], "size_mb": card["size_mb"],
                                 "artifact_dev": card["metrics"]["artifact_dev"], "latency": card["latency"]}
    return results


def run_search(settings: SearchSettings, out: Path, *, resume: bool = False, progress: SearchProgress | None = None,
               latency_progress: Any = None, latency_steps: Any = None, final_progress: Any = None,
               executor: Executor | None = None,
               export_status: Callable[[str], None] | None = None,
               confirm_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs (or resumes) a search into `out` and returns the report it writes. `executor` says where candidates
    run (default: one after another in this process); it is not a setting of the run, so a resumed run may use
    another."""
    from kdnas_deploy.distill.api import distill, prepare
    from kdnas_deploy.distill.trainer import TrainConfig
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.evaluator import ProxyEvaluator
    from kdnas_deploy.search.latency import LatencyOracle

    if (out / RUN_FILE).exists() and not resume:
        raise KdnasError(f"{out} already holds a search run: use --resume to continue it, or another --out")
    r = _resolve(settings)
    teacher_config, teacher_arch, space, profiles = r.teacher_config, r.teacher_arch, r.space, r.profiles
    for p in profiles:
        p.check_runnable()
    with LatencyTable(r.table_path) as table:
        oracle = LatencyOracle(table, profiles, settings.machines or ())
        elsewhere = oracle.elsewhere()
        record = {
            "settings": asdict(settings),
            "teacher_config_hash": teacher_config_hash(teacher_config),
            "profiles": {name: {"content_hash": m.profile.content_hash(), "fingerprint": m.fingerprint}
                         for name, m in oracle.models.items()},
            "space": space.to_dict(),
        }
        if resume:
            before = json.loads((out / RUN_FILE).read_text())
            same_teacher = is_recorded_teacher(before.get("teacher_config_hash"), teacher_config, before["settings"]["teacher"])
            if not same_teacher or before.get("profiles") != record["profiles"]:
                raise KdnasError(f"{out}: the teacher, profiles or machine changed since this run started; start a new "
                                 "run (or, to read the first machine's timings, resume with its table and --machine)")
        write_json_atomic(out / RUN_FILE, record)
        references = budget_references(settings.budgets or [])
        oracle.fill(space, extra=[teacher_arch, *references], calibration=settings.calibration, seed=settings.seed,
                    progress=latency_progress, on_step=latency_steps)
        teacher_ms = oracle(teacher_arch)
        if settings.target_ms is not None:
            config = RewardConfig({p.name: settings.target_ms for p in profiles}, form=settings.reward)
        else:
            config = RewardConfig.from_speedup(teacher_ms, settings.speedup or DEFAULT_SPEEDUP, form=settings.reward)
        source = DataSource.from_dict(settings.data)
        teacher = load_classifier(settings.teacher)
        prepared = prepare(settings.teacher, source, settings.max_length)
        evaluate = ProxyEvaluator.from_prepared(teacher, prepared, settings.proxy, settings.held_out,
                                                init=settings.init,  # type: ignore[arg-type]
                                                train_config=TrainConfig(epochs=settings.proxy_epochs, seed=settings.seed))
        teacher_metrics = evaluate.teacher_metrics()
        first = profiles[0].name
        budgets = resolve_budgets(settings.budgets, lambda a: oracle(a)[first]) if settings.budgets else None
        bands = budget_bands([b.ms for b in budgets], first) if budgets else ()
        strategy = make_strategy(settings.strategy, space, config, oracle, settings.seed,
                                 deployment_limits(settings, teacher_config, profiles), bands)
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
    choices = chosen_finals(out, candidates, budgets, profiles[0], rounds, confirm_status, settings.latency_margin,
                            keep=settings.halving_top if halving else 1)
    if halving:
        rungs = plan_rungs(settings.proxy, len(evaluate.split.held_out_rows), len(prepared.encoded.train),
                           settings.halving_top, settings.halving_rungs)
        recipe = f"init-{settings.init}/epochs{settings.proxy_epochs}/seed{settings.seed}/len{settings.max_length}"

        def evaluate_for(rung: Any) -> Any:
            return ProxyEvaluator.from_prepared(teacher, prepared, rung.proxy, rung.held_out,
                                                init=settings.init,  # type: ignore[arg-type]
                                                train_config=TrainConfig(epochs=settings.proxy_epochs, seed=settings.seed))

        by_arch = {str(c.arch): c for c in candidates}
        with Journal(out / JOURNAL_FILE) as journal:
            for choice in choices:
                if len(choice.fits) < 2:
                    continue
                result = successive_halving([by_arch[a].arch for a in choice.fits], rungs, evaluate_for, journal,
                                            recipe, executor, status=confirm_status)
                choice.halving = result.to_dict()
                if result.winner is not None:
                    choice.candidate = by_arch[result.winner]
    finals: list[dict[str, Any]] = []
    if settings.final:
        for choice in choices:
            chosen = choice.candidate
            entry: dict[str, Any] = {**choice.to_dict(), "budget_ms": choice.budget.ms if budgets else None}
            if chosen is not None:
                folder = out / "students" / str(chosen.arch)
                info = read_info(folder)  # a resumed run, or a second budget with the same winner, keeps it
                if info is None:
                    info = distill(settings.teacher, source, chosen.arch, folder, max_length=settings.max_length,
                                   init=settings.init,  # type: ignore[arg-type]
                                   train_config=TrainConfig(epochs=settings.final_epochs, seed=settings.seed),
                                   progress=final_progress)
                entry.update(folder=str(folder), latency_ms=chosen.latency, proxy_score=chosen.score, dev=info.metrics["dev"])
                if settings.export:
                    entry["artifacts"] = export_finals(folder, profiles, out, r.table_path, export_status, elsewhere)
            finals.append(entry)
    report = build_report(settings, candidates, teacher_arch, teacher_ms, teacher_metrics["score"], config, finals)
    if budgets:
        report["choices"] = [c.to_dict() for c in choices]
    if elsewhere:
        report["latency_machines"] = elsewhere
    write_report(out, report)
    return report


def chosen_finals(out: Path, candidates: list[Candidate], budgets: list[Budget] | None, profile: Any, rounds: int,
                  status: Callable[[str], None] | None = None, margin: float = LATENCY_MARGIN,
                  keep: int = 1) -> list[Choice]:
    """The student per budget, re-timed side by side unless `rounds` is 0. The choice is kept in choices.json
    for the candidates it was made from, so a resumed run distils what it chose before instead of re-timing
    (and perhaps choosing differently) after a crash between the choice and the distillation."""
    if not budgets:
        return choose_finals(candidates, None, profile.name)
    done = sorted(str(c.arch) for c in candidates if c.status == "done")
    key = {"candidates": done, "rounds": rounds, "budgets": [asdict(b) for b in budgets], "margin": margin,
           "keep": keep}
    path = out / CHOICES_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if all(saved.get(k) == v for k, v in key.items()):
            return [Choice.from_dict(c, candidates) for c in saved["choices"]]
    if rounds > 0:
        with InterleavedTimer(profile, rounds, status) as timer:
            choices = choose_finals(candidates, budgets, profile.name, timer, margin=margin, keep=keep)
    else:
        choices = choose_finals(candidates, budgets, profile.name, keep=keep)
    write_json_atomic(path, {**key, "choices": [c.to_dict() for c in choices]})
    return choices


def dry_run(settings: SearchSettings, measure_steps: int = 3) -> dict[str, Any]:
    """What a search would do and roughly how long: space size, table coverage, and a time estimate from
    `measure_steps` distillation steps of a mid-sized candidate timed on this machine."""
    import math
    import time

    from kdnas_deploy.distill.api import distill_student, prepare, proxy_split
    from kdnas_deploy.distill.objective import DistillConfig
    from kdnas_deploy.distill.teacher_cache import TeacherCache
    from kdnas_deploy.distill.trainer import TrainConfig, TrainProgress
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.search.latency import LatencyOracle

    r = _resolve(settings)
    with LatencyTable(r.table_path) as table:
        oracle = LatencyOracle(table, r.profiles, settings.machines or ())
        coverage = oracle.coverage(r.space, [r.teacher_arch], settings.calibration, settings.seed)
        table_s = oracle.fill_seconds(r.space, [r.teacher_arch], settings.calibration, settings.seed)
    prepared = prepare(settings.teacher, DataSource.from_dict(settings.data), settings.max_length)
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
        "estimate_s": {"latency_table": round(table_s), "proxy_distillation": round(proxy_steps * step_s),
                       "successive_halving": round(halving_steps * step_s),
                       "final_distillation": round(final_steps * step_s)},
        "measured_step_s": round(step_s, 3), "step_measured_on": str(probe),
        "candidates": settings.episodes * settings.top_k, "training_rows": len(prepared.encoded.train),
    }


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
