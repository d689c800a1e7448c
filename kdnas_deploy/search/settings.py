"""A search's settings: validated from flags, a --config file or a run's `run.json`, and resolved into the teacher,
space, profiles and latency table they name."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.distill import DEFAULT_INIT, INITS
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.model_folder import model_ref
from kdnas_deploy.search.finals import CONFIRM_ROUNDS, LATENCY_MARGIN, parse_budget
from kdnas_deploy.search.halving import HALVING_RUNGS, HALVING_TOP
from kdnas_deploy.search.strategies import STRATEGIES, Allowed

RUN_FILE = "run.json"
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
    #: The request lengths every latency of the search is taken under: "task" (the task's tokenized training rows,
    #: capped at max_length: what a server pads its batches to), a file of lengths (one a line, or `length count`
    #: a line), or "fixed" (the profile's own length, or `seq_len`).
    lengths: str = "task"
    #: A fixed length instead of a distribution: every latency at this many tokens (implies lengths "fixed").
    seq_len: int | None = None

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
        if not self.lengths:
            raise KdnasError("--lengths: give task, fixed or a file of request lengths")
        if self.seq_len is not None:
            if self.seq_len < 1:
                raise KdnasError(f"--seq-len must be at least 1 token, got {self.seq_len}")
            if self.lengths not in ("task", "fixed"):
                raise KdnasError("give --lengths FILE or --seq-len, not both: --seq-len times every latency at one length")
            self.lengths = "fixed"

    def length_distribution(self, train: Any, task: str | None = None) -> Any:
        """The distribution `lengths` names over the task's tokenized training split `train` (`task`: its name,
        default the data's); None when fixed."""
        from kdnas_deploy.latency.lengths import named_lengths

        return named_lengths(self.lengths, train, task or self.data.get("task") or "custom", self.max_length)


def settings_from(flags: dict[str, Any], data: DataSource, config: Path | None = None) -> SearchSettings:
    """Settings from a `--config` TOML overlaid with `flags`, the settings the user gave on the command line (the CLI
    passes only those, whatever their value); with no data options anywhere, the data recorded in the teacher's
    kdnas.json."""
    from kdnas_deploy.data.prepare import source_from_teacher

    values = {**(read_config(config) if config else {}), **flags}
    source = f"--config {config}" if config else "search settings"
    if not values.get("teacher"):
        raise KdnasError("give --teacher (or --resume with the --out of an earlier run)")
    SearchSettings.validated({**values, "data": {}}, source)  # every value's type, before the teacher's data is read
    if values.get("space", "auto") != "auto":
        values["space"] = str(Path(values["space"]).resolve())
    if values.get("lengths", "task") not in ("task", "fixed"):  # a file: kept absolute for a resumed run
        values["lengths"] = str(Path(values["lengths"]).resolve())
    merged = DataSource.from_dict({**values.get("data", {}), **data.to_dict()})
    values["data"] = source_from_teacher(model_ref(values["teacher"]), merged).to_dict()
    return SearchSettings.validated(values, source)


def read_config(path: Path) -> dict[str, Any]:
    """A `--config` TOML: top-level keys are SearchSettings fields; `[data]` holds the data options."""
    from kdnas_deploy.util.files import read_toml

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
    from kdnas_deploy.util.files import read_text_file

    try:
        saved = json.loads(read_text_file(path, "run file"))["settings"]
    except (ValueError, KeyError, TypeError):
        raise KdnasError(f"{path}: damaged (not the JSON run.json a search writes); start a new run in another --out") from None
    if not isinstance(saved, dict):
        raise KdnasError(f"{path}: damaged (its settings are not an object); start a new run in another --out")
    saved.setdefault("init", "inherit")  # runs begun before the setting existed inherited the first units
    saved.setdefault("lengths", "fixed")  # runs begun before traffic-shaped latency timed one length
    return SearchSettings.validated(saved, str(path))


@dataclass
class Resolved:
    teacher_arch: Any
    teacher_config: Any
    space: Any
    profiles: list[Any]
    table_path: Path


def resolve(settings: SearchSettings) -> Resolved:
    """Teacher, space, profiles and table a run's settings name: what both the run and the dry run need."""
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.table import default_table_path
    from kdnas_deploy.space import SearchSpace, StudentArch
    from kdnas_deploy.teacher_config import load_teacher_config

    settings.teacher = model_ref(settings.teacher)
    teacher_config = load_teacher_config(settings.teacher)
    return Resolved(StudentArch.from_config(teacher_config), teacher_config, SearchSpace.resolve(settings.space, teacher_config),
                     [load_profile(h).with_shape(seq_len=settings.seq_len) for h in settings.hw],
                     Path(settings.table) if settings.table else default_table_path())


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
