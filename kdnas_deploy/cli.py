"""The `kdnas-deploy` command line: argument parsing and display over the library API."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from kdnas_deploy import __version__
from kdnas_deploy.cli_progress import make_progress, status as progress_status
from kdnas_deploy.distill import DEFAULT_INIT, INIT_DESCRIPTIONS, INITS, LENGTH_BUCKETS
from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.util.files import writable_dir
from kdnas_deploy.search.settings import SearchSettings

app = typer.Typer(
    name="kdnas-deploy",
    help="Find, distil and ship the best small student of a BERT-family teacher for your hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])


def _quiet_libraries() -> None:
    # Our own progress bars and one-line errors replace the libraries' per-map bars and load-time chatter. Through
    # their environment switches, read at import: a command that never imports them (predict, serve) must not pay
    # their 5 s import to quiet them.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _progress() -> Any:
    """Bars on a terminal; plain lines at most every 30 s elsewhere (a log file, CI, a pipe)."""
    return make_progress(console)


class Engine(str, Enum):
    """What serves: one uvicorn process, or Ray Serve replicas."""

    uvicorn = "uvicorn"
    ray = "ray"


HwOpt = Annotated[list[str], typer.Option("--hw", help="Hardware profile: shipped name (cpu, cpu-int8, cpu-int8-static, cuda) or a .toml path. Repeatable.")]
TableOpt = Annotated[Optional[Path], typer.Option("--table", help="Latency table (SQLite). Default: the user cache dir.")]


@app.command()
def profile(
    hw: HwOpt = ["cpu"],
    table: TableOpt = None,
    space: Annotated[str, typer.Option(help="'auto' (from --teacher, else the BERT-base space) or a space TOML file.")] = "auto",
    teacher: Annotated[Optional[str], typer.Option(help="Teacher (hub id or folder): derive the space from its config and predict its latency.")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Override the profile's batch size.", min=1)] = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Override the profile's sequence length.", min=1)] = None,
    calibration: Annotated[int, typer.Option(help="Whole models timed to calibrate block composition.", min=0)] = 12,
    arch: Annotated[list[str], typer.Option("--arch", help="Also predict this architecture (L4-H312-A12-I1200). Repeatable.")] = [],
    verify: Annotated[int, typer.Option(help="Time N random whole architectures and report the prediction error.", min=0)] = 0,
    seed: Annotated[int, typer.Option(help="Seed for calibration and verification samples.")] = 0,
    full: Annotated[bool, typer.Option("--full", help="Time every layer shape instead of the designed subset that the layer fit interpolates (about twice as long; --verify says what it gains).")] = False,
    references: Annotated[bool, typer.Option(help="Predict the reference shapes (BERT-base, 6x384, 4x312).")] = True,
    lengths: Annotated[Optional[Path], typer.Option("--lengths", help="Request lengths in tokens (one a line, or 'length count' a line): time the lengths that bracket them and report latency under that traffic, capped at the profile's (or --seq-len's) length.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Fill the latency lookup table for a search space on hardware profiles, and summarise it."""
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.graph import ensure_graph_fits
    from kdnas_deploy.latency.lengths import LengthDistribution
    from kdnas_deploy.latency.profiler import plan, summarize, verify_sample, verify_steps
    from kdnas_deploy.latency.profiler import verify as run_verify
    from kdnas_deploy.latency.traffic import TrafficLatency
    from kdnas_deploy.latency.predictor import LatencyModel, items_for
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.space import REFERENCE_ARCHS, SearchSpace, StudentArch
    from kdnas_deploy.teacher_config import load_teacher_config

    profiles = [load_profile(h).with_shape(batch, seq_len) for h in hw]
    extra = [StudentArch.parse(a) for a in arch]
    teacher_config = load_teacher_config(teacher) if teacher else None
    teacher_arch = StudentArch.from_config(teacher_config) if teacher_config else None
    the_space = SearchSpace.resolve(space, teacher_config)
    for p in profiles:
        p.check_runnable()
    for a in extra:  # before an hour of timing, not after it
        ensure_graph_fits(a)
    table_path = table or default_table_path()
    distributions = {p.name: LengthDistribution.read(lengths, p.shape.seq_len) for p in profiles} if lengths else {}
    summaries = []
    with LatencyTable(table_path) as tbl:
        for prof in profiles:
            refs = [*(REFERENCE_ARCHS if references else ()), *extra] + ([teacher_arch] if teacher_arch else [])
            items = list(dict.fromkeys(plan(the_space, calibration, seed, full=full) + [it for a in refs for it in items_for(a)]))
            traffic = TrafficLatency(tbl, prof, distributions[prof.name]) if lengths else None
            models = traffic.by_length() if traffic else [LatencyModel(tbl, prof)]
            results = [_fill_table(m, items, seed, f"{prof.name}" + (f" at {m.seq_len} tokens" if traffic else ""))
                       for m in models]
            model, result = models[0], results[0]
            rows: list[Any] = []
            if verify and traffic is None:
                sample = verify_sample(model, the_space, verify, seed + 1)
                with _progress() as bar:
                    task = bar.add_task(f"{escape(prof.name)}: verifying", total=verify_steps(model, sample))
                    rows = run_verify(model, sample, progress=lambda a: bar.update(task, advance=1))
            summary = summarize(model, the_space, result, refs, rows, teacher=teacher_arch)
            if traffic is not None:
                summary["traffic"] = _traffic_summary(traffic, the_space, refs, results, verify, seed)
            summaries.append(summary)
            if not as_json:
                _print_summary(summary)
    if as_json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2))


def _fill_table(model: Any, items: list[Any], seed: int, label: str) -> Any:
    """Time what the table lacks of `items` for one model's shape, with an estimate first and a progress bar."""
    from kdnas_deploy.latency.profiler import estimate_seconds, profile_items, profile_steps

    todo = model.missing(items)
    if todo:
        console.print(f"{escape(label)}: {len(todo)} of {len(items)} timings to measure, about "
                      f"{_minutes(estimate_seconds(model, todo))} here (estimate); each group of graphs is "
                      "stored as soon as it is timed", highlight=False, soft_wrap=True)
    with _progress() as bar:
        steps = [0, profile_steps(model, items)]  # done, planned: read from the table once
        task = bar.add_task(f"{escape(label)}: timing", total=steps[1])

        def tick(item: Any, cached: bool) -> None:
            bar.update(task, description=f"{escape(label)}: {'cached' if cached else 'timed'} {item[0]} {item[1]}")

        def step(done: int, added: int) -> None:
            steps[0] += done
            steps[1] += added
            bar.update(task, completed=steps[0], total=steps[1])

        return profile_items(model, items, seed=seed, progress=tick, on_step=step)


def _traffic_summary(traffic: Any, space: Any, refs: list[Any], results: list[Any], verify: int, seed: int) -> dict[str, Any]:
    """The latency of the reference shapes under the length distribution, and --verify at lengths drawn from it."""
    from kdnas_deploy.latency.profiler import error_stats, verify_sample, verify_steps
    from kdnas_deploy.latency.traffic import verify_traffic

    out: dict[str, Any] = {
        "shape": traffic.shape(), "batch": traffic.profile.shape.batch_size,
        "lengths": traffic.lengths.to_dict(), "padded_mean": round(traffic.padded.mean(), 3),
        "nodes": list(traffic.nodes), "wall_s": round(sum(r.wall_s for r in results), 2),
        "measured": sum(len(r.measured) for r in results),
        "predictions": [{"arch": str(p.arch), "mean_ms": p.mean_ms, "p50_ms": p.p50_ms, "p90_ms": p.p90_ms}
                        for p in (traffic.predict(a) for a in dict.fromkeys(refs))],
    }
    if verify:
        top = traffic.models[max(traffic.nodes)]
        sample = verify_sample(top, space, verify, seed + 1)
        with _progress() as bar:
            task = bar.add_task("verifying at drawn lengths", total=verify_steps(top, sample))
            rows = verify_traffic(traffic, sample, seed + 1, progress=lambda a: bar.update(task, advance=1))
        stats = error_stats([r.predicted_ms for r in rows], [r.timing.median_ms for r in rows])
        out["verify"] = stats.to_dict() | {"rows": [
            {"arch": str(r.arch), "length": r.length, "predicted_ms": r.predicted_ms,
             "measured_ms": r.timing.median_ms, "error_pct": r.error_pct} for r in rows]}
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _print_summary(s: dict[str, Any]) -> None:
    from kdnas_deploy.instruction_set import describe_info

    t = s["timings"]
    m = s["machine"]
    out.print(
        f"[bold]{escape(s['profile'])}[/] ({s['precision']}, batch {s['batch']}, seq {s['seq_len']}) on "
        f"{m.get('gpu') or m['cpu']} x{m['cpu_count']} ({describe_info(m)}), onnxruntime {m['onnxruntime']}; "
        f"fingerprint {s['fingerprint']}"
    )
    out.print(
        f"space {s['space']['name']}: {s['space']['architectures']} architectures, {s['space']['layer_shapes']} layer shapes; "
        f"table {s['table']}"
    )
    out.print(
        f"timings: {t['needed']} needed, {t['measured']} measured now, {t['cached']} from cache, in {s['wall_s']:.1f} s"
        + (f"; [yellow]unfused: {', '.join(t['unfused'])}[/]" if t["unfused"] else "")
        + (f"; noisy: {len(t['noisy'])}" if t["noisy"] else "")
        + (f"; slow spells: {t['extra_sessions']} extra sessions, {t['remeasured']} re-measured"
           if t["extra_sessions"] or t["remeasured"] else "")
        + (f"; the probe ran {100 * (t['probe_slowdown'] - 1):.0f}% over its calm time (median)"
           if (t.get("probe_slowdown") or 1.0) > 1.05 else "")
    )
    c = s["calibration"]
    out.print(f"calibration: measured = {c['scale']:.3f} x composed ^ {c['exponent']:.3f} ({c['points']} whole models)")
    fit = s.get("layer_fit")
    out.print(f"layers: fitted over {fit['blocks']} block timings" if fit else "layers: each from its own block timing (too few blocks to fit)")
    tab = Table(title=f"predicted latency (batch {s['batch']}, {s['seq_len']} tokens)")
    for col in ("architecture", "params (M)", "latency (ms)", "source"):
        tab.add_column(col, justify="right" if col != "architecture" else "left")
    for p in s["predictions"]:
        name = p["arch"] + (" (teacher)" if p["arch"] == s.get("teacher") else "")
        tab.add_row(name, f"{p['params'] / 1e6:.1f}", f"{p['ms']:.2f}", p["source"])
    out.print(tab)
    if "verify" in s:
        v = s["verify"]
        out.print(
            f"verify on {v['n']} random architectures: MAPE {v['mape_pct']:.1f}%, {v['within_10pct'] * 100:.0f}% within 10%, "
            f"Spearman {v['spearman']:.3f}, worst {v['max_ape_pct']:.1f}%"
        )
    if "traffic" in s:
        t = s["traffic"]
        out.print(f"under traffic ({escape(t['shape'])}): lengths {', '.join(map(str, t['nodes']))} timed, the rest "
                  f"interpolated; a batch is padded to {t['padded_mean']:.1f} tokens on average", highlight=False)
        tab = Table(title=f"predicted latency under traffic (batch {t['batch']})")
        for col in ("architecture", "mean (ms)", "p50 (ms)", "p90 (ms)"):
            tab.add_column(col, justify="right" if col != "architecture" else "left")
        for p in t["predictions"]:
            tab.add_row(p["arch"], f"{p['mean_ms']:.2f}", f"{p['p50_ms']:.2f}", f"{p['p90_ms']:.2f}")
        out.print(tab)
        if "verify" in t:
            v = t["verify"]
            out.print(f"verify on {v['n']} random architectures at lengths drawn from the traffic: MAPE "
                      f"{v['mape_pct']:.1f}%, {v['within_10pct'] * 100:.0f}% within 10%, Spearman {v['spearman']:.3f}, "
                      f"worst {v['max_ape_pct']:.1f}%", highlight=False)


# --- data, teacher and distillation -------------------------------------------------------------

TaskOpt = Annotated[Optional[str], typer.Option("--task", help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli. Alone: load from the hub.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="GLUE-format folder (train.tsv, dev.tsv) or a folder with train/dev .csv/.jsonl/.parquet.")]
TrainFileOpt = Annotated[Optional[Path], typer.Option("--train-file", help="Your own training file (.csv, .tsv, .jsonl, .parquet).")]
DevFileOpt = Annotated[Optional[Path], typer.Option("--dev-file", help="Your own dev file, same format.")]
TextColsOpt = Annotated[Optional[str], typer.Option("--text-columns", help="Column(s) holding the text: 'text' or 'sentence1,sentence2'.")]
LabelColOpt = Annotated[Optional[str], typer.Option("--label-column", help="Column holding the label (default: the task's, else 'label').")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="Truncate inputs to this many tokens.", min=8)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling, initialisation and batch order.")]
InitOpt = Annotated[str, typer.Option("--init", help="How a student starts from the teacher: " + "; ".join(
    f"{name}: {text}" for name, text in INIT_DESCRIPTIONS.items()) + ".")]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training rows.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")]
BucketsOpt = Annotated[int, typer.Option("--length-buckets", min=0, help="Sort each window of this many batches' rows by length before batching (less padding); 0: plain random batches.")]
SamplesOpt = Annotated[Optional[int], typer.Option("--train-samples", min=2, help="Train on a seeded sample of this many training rows.")]


def _source(task: Optional[str], data_dir: Optional[Path], train_file: Optional[Path], dev_file: Optional[Path],
            text_columns: Optional[str], label_column: Optional[str]) -> Any:
    from kdnas_deploy.data.sources import DataSource

    cols = tuple(c.strip() for c in text_columns.split(",") if c.strip()) if text_columns else None
    def absolute(path: Optional[Path]) -> Optional[str]:
        return str(path.expanduser().resolve()) if path else None  # kdnas.json must work from any directory

    return DataSource(task=task, data_dir=absolute(data_dir), train_file=absolute(train_file), dev_file=absolute(dev_file),
                      text_columns=cols, label_column=label_column)


class _BarProgress:
    """Training progress on stderr: a bar with the running loss and the last evaluation."""

    def __init__(self, label: str, before: Any = None):
        self.label = label
        self.before = before  # a bar to stop first: rich shows one live display at a time
        self.bar = _progress()
        self.task: Any = None
        self.loss: Any = None
        self.metric = ""
        self.drawn = 0.0

    def start(self, total_steps: int, done_steps: int) -> None:
        if self.before is not None:
            self.before.stop()
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total_steps, completed=done_steps)

    def step(self, loss: Any) -> None:
        # A running mean kept as the loss's own type (a tensor on the training device): it is read as a number only
        # when the line is redrawn, at most twice a second, so a GPU run does not wait on every step for it.
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        now = time.monotonic()
        if now - self.drawn >= 0.5:
            self.drawn = now
            self.bar.update(self.task, advance=1, description=f"{self.label} loss {float(self.loss):.4f}{self.metric}")
        else:
            self.bar.update(self.task, advance=1)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if "score" in metrics:
            self.metric = f" score {metrics['score']:.4f}"
        console.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), highlight=False)

    def stop(self) -> None:
        self.bar.stop()


def _report(info: Any, out_dir: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info.model_dump(), indent=2))
        return
    out.print(f"[bold]{escape(info.kind)}[/] {info.arch} on {info.task} saved to {escape(str(out_dir))}")
    for split, values in info.metrics.items():
        out.print(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()), highlight=False)
    t = info.training
    out.print(f"  {t['rows']} training rows, {t['steps']} steps in {t['train_seconds']:.0f} s "
              f"({t['examples_per_second']:.0f} examples/s)", highlight=False)


table_app = typer.Typer(help="See what a latency table holds, merge another machine's timings into it, export them.",
                        no_args_is_help=True)
app.add_typer(table_app, name="table")


def _filled_table(table: Optional[Path]) -> Path:
    """`--table` (default: the user cache dir's), which must exist: reading commands never create one."""
    from kdnas_deploy.latency.table import default_table_path

    path = table or default_table_path()
    if not path.exists():
        raise KdnasError(f"no latency table at {path} yet: `kdnas-deploy profile` fills one")
    return path


@table_app.command("list")
def table_list(
    table: TableOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the machines as JSON on stdout.")] = False,
) -> None:
    """The machines a latency table holds timings of: fingerprint, profile, CPU or GPU, rows by kind, shapes."""
    from dataclasses import asdict

    from kdnas_deploy.instruction_set import describe_info
    from kdnas_deploy.latency.table import KINDS, LatencyTable
    from kdnas_deploy.latency.transfer import describe, this_host

    path = _filled_table(table)
    with LatencyTable(path, readonly=True) as tbl:
        machines = tbl.machines()
    here = this_host(machines)
    if as_json:
        print(json.dumps([{**asdict(m), "instruction_set": describe_info(m.info), "this_host": m.id in here}
                          for m in machines], indent=2))
        return
    grid = Table(caption="timings: all (" + ", ".join(KINDS) + ")", caption_justify="left")
    grid.add_column("machine", no_wrap=True)  # the id a user copies into --machine: never wrapped or cut
    for title in ("profile, device", "timings", "batch x seq", "last timed"):
        grid.add_column(title, overflow="fold")
    for m in machines:
        grid.add_row(m.id + ("\n(this host)" if m.id in here else ""), escape(describe(m.info)),
                     f"{m.count}\n(" + "/".join(str(m.rows.get(k, 0)) for k in KINDS) + ")",
                     ", ".join(f"{b}x{n}" for b, n in m.shapes),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(m.last_timed)) if m.last_timed else "")
    out.print(f"{escape(str(path))}: {len(machines)} machine(s), {sum(m.count for m in machines)} timings",
              highlight=False)
    out.print(grid)


@table_app.command("merge")
def table_merge(
    sources: Annotated[list[Path], typer.Argument(help="Latency tables (SQLite) or JSON exports to add from.")],
    table: TableOpt = None,
    machine: Annotated[list[str], typer.Option("--machine", help="Merge only this machine's timings. Repeatable.")] = [],
) -> None:
    """Add another machine's timings (a table profiled on a deployment target, or its export) to a latency table.
    Rows the table already has are kept; merging twice adds nothing."""
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.latency.transfer import describe, merge

    path = table or default_table_path()
    with LatencyTable(path) as tbl:
        merged = merge(tbl, sources, machine)
    for m in merged:
        out.print(f"{escape(m.source)}: machine {m.machine} ({escape(describe(m.info))}): {m.added} of {m.offered} "
                  "timings added", highlight=False)
    if not merged:
        out.print("the sources hold no timings", highlight=False)
    out.print(f"search with `--table {escape(str(path))} --machine ID` to read a merged machine's timings",
              highlight=False)


@table_app.command("export")
def table_export(
    out_file: Annotated[Path, typer.Option("--out", help="JSON file to write.")],
    table: TableOpt = None,
    machine: Annotated[list[str], typer.Option("--machine", help="Export only this machine's timings (default: every machine's). Repeatable.")] = [],
) -> None:
    """Write machines' timings as one JSON file, for `table merge` on another host (text: diffable, mailable)."""
    from kdnas_deploy.latency.table import LatencyTable
    from kdnas_deploy.latency.transfer import export
    from kdnas_deploy.model_folder import write_json_atomic
    from kdnas_deploy.util.files import writable_file

    path = _filled_table(table)
    target = writable_file(out_file, "--out")
    with LatencyTable(path, readonly=True) as tbl:
        document = export(tbl, machine)
    write_json_atomic(target, document)
    n = sum(len(e["timings"]) for e in document["exports"])
    out.print(f"{target}: {n} timings of {len(document['exports'])} machine(s)", highlight=False)


@app.command()
def teacher(
    backbone: Annotated[str, typer.Option("--backbone", help="Pretrained BERT-family model: hub id or folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the teacher to.")],
    task: TaskOpt = None, data_dir: DataDirOpt = None, train_file: TrainFileOpt = None, dev_file: DevFileOpt = None,
    text_columns: TextColsOpt = None, label_column: LabelColOpt = None, max_length: MaxLenOpt = 128,
    epochs: EpochsOpt = 3, batch_size: BatchOpt = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-5,
    train_samples: SamplesOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "auto",
    length_buckets: BucketsOpt = LENGTH_BUCKETS,
    as_json: Annotated[bool, typer.Option("--json", help="Print kdnas.json on stdout.")] = False,
) -> None:
    """Fine-tune a pretrained backbone into a teacher for the task; evaluate it on dev and save it."""
    _quiet_libraries()
    from kdnas_deploy.distill.api import make_teacher
    from kdnas_deploy.distill.trainer import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, device=device,
                         length_buckets=length_buckets)
    source = _source(task, data_dir, train_file, dev_file, text_columns, label_column)
    info = make_teacher(backbone, source, out_dir, train_samples=train_samples, max_length=max_length,
                        train_config=config, progress=_BarProgress("fine-tuning"))
    _report(info, out_dir, as_json)


@app.command()
def distill(
    teacher_path: Annotated[str, typer.Option("--teacher", help="Teacher: a folder from `kdnas-deploy teacher`, any BERT-family classifier folder, or a hub id.")],
    arch: Annotated[str, typer.Option("--arch", help="Student architecture, e.g. L4-H256-A4-I1024 (any hidden divisible by heads).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the student to (a checkpoint there is resumed).")],
    task: TaskOpt = None, data_dir: DataDirOpt = None, train_file: TrainFileOpt = None, dev_file: DevFileOpt = None,
    text_columns: TextColsOpt = None, label_column: LabelColOpt = None, max_length: MaxLenOpt = 128,
    init: InitOpt = DEFAULT_INIT,
    proxy: Annotated[Optional[int], typer.Option("--proxy", min=2, help="Distil on a stratified sample of N training rows; score on a held-out slice.")] = None,
    held_out: Annotated[Optional[int], typer.Option("--held-out", min=1, help="Held-out rows for --proxy scoring (default min(1000, 20%)).")] = None,
    train_samples: SamplesOpt = None,
    epochs: EpochsOpt = 3, batch_size: BatchOpt = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 1e-4,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the logit loss.")] = 1.0,
    logit_weight: Annotated[float, typer.Option(help="Weight of the soft-target loss (KL; MSE for regression).")] = 1.0,
    label_weight: Annotated[float, typer.Option(help="Weight of the gold-label loss.")] = 0.0,
    hidden_weight: Annotated[float, typer.Option(help="Weight of the hidden-state loss (learned projection).")] = 1.0,
    relation_weight: Annotated[float, typer.Option(help="Weight of the MiniLMv2 attention-relation loss.")] = 1.0,
    layer_map: Annotated[Optional[str], typer.Option("--layer-map", help="Teacher layer (1-based) per student layer, e.g. 2,4,6. Default: uniform, last to last.")] = None,
    seed: SeedOpt = 0, device: DeviceOpt = "auto", length_buckets: BucketsOpt = LENGTH_BUCKETS,
    as_json: Annotated[bool, typer.Option("--json", help="Print kdnas.json on stdout.")] = False,
) -> None:
    """Distil a student of any architecture from a teacher and save it as a model folder with kdnas.json."""
    _quiet_libraries()
    from kdnas_deploy.distill.api import distill as run_distill
    from kdnas_deploy.distill.objective import DistillConfig
    from kdnas_deploy.distill.student import parse_layer_map
    from kdnas_deploy.distill.trainer import TrainConfig
    from kdnas_deploy.space import StudentArch
    from kdnas_deploy.teacher_config import load_teacher_config

    student = StudentArch.parse(arch)
    if init not in INITS:
        raise KdnasError(f"--init {init!r}: use {', '.join(INITS)}")
    layers = None
    if layer_map:
        layers = parse_layer_map(layer_map, student.layers, load_teacher_config(teacher_path).num_hidden_layers)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, device=device,
                         length_buckets=length_buckets)
    dconfig = DistillConfig(logit_weight=logit_weight, temperature=temperature, label_weight=label_weight,
                            hidden_weight=hidden_weight, relation_weight=relation_weight, layer_map=layers)
    source = _source(task, data_dir, train_file, dev_file, text_columns, label_column)
    info = run_distill(teacher_path, source, student, out_dir, init=init, proxy=proxy, held_out=held_out,  # type: ignore[arg-type]
                       train_samples=train_samples, max_length=max_length, train_config=config,
                       distill_config=dconfig, progress=_BarProgress(f"distilling {student}"))
    _report(info, out_dir, as_json)


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Model folder (teacher or student) or hub id.")],
    task: TaskOpt = None, data_dir: DataDirOpt = None, train_file: TrainFileOpt = None, dev_file: DevFileOpt = None,
    text_columns: TextColsOpt = None, label_column: LabelColOpt = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", min=8, help="Default: the folder's own.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Score a model folder on the dev split (its kdnas.json names the task when no data flags are given)."""
    _quiet_libraries()
    from kdnas_deploy.distill.api import evaluate_folder

    metrics = evaluate_folder(model, _source(task, data_dir, train_file, dev_file, text_columns, label_column), max_length)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        out.print("dev: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), highlight=False)


class _SearchBar:
    """Search progress on stderr: episode, candidates in flight and the best reward so far."""

    def __init__(self, before: Any = None) -> None:
        self.bar = _progress()
        self.task: Any = None
        self.before = before  # the latency-table bar: rich shows one live display at a time

    def episode_start(self, episode: int, episodes: int, candidates: list[Any]) -> None:
        if self.task is None:
            if self.before is not None:
                self.before.stop()
            self.bar.start()
            self.task = self.bar.add_task("search", total=None)
        self.bar.update(self.task, total=len(candidates), completed=0,
                        description=f"episode {episode}/{episodes}: {', '.join(map(str, candidates))}")

    def candidate_end(self, episode: int, candidate: Any, best: Any) -> None:
        self.bar.update(self.task, advance=1)
        got = f"score {candidate.score:.4f} reward {candidate.reward:.4f}" if candidate.status == "done" and candidate.reward is not None \
            else (f"failed: {candidate.error}" if candidate.status == "failed" else "rejected")
        console.print(f"episode {episode}: {candidate.arch} {got}" + (f"; best {best.arch} {best.reward:.4f}" if best else ""),
                      highlight=False)

    def stop(self) -> None:
        self.bar.stop()


_SEARCH_DEFAULTS = SearchSettings.defaults()


@app.command()
def search(
    ctx: typer.Context,
    teacher_path: Annotated[Optional[str], typer.Option("--teacher", help="Teacher folder or hub id (with --resume: only where the run's teacher has moved to).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("kdnas-run"),
    task: TaskOpt = None, data_dir: DataDirOpt = None, train_file: TrainFileOpt = None, dev_file: DevFileOpt = None,
    text_columns: TextColsOpt = None, label_column: LabelColOpt = None, max_length: MaxLenOpt = _SEARCH_DEFAULTS["max_length"],
    hw: HwOpt = _SEARCH_DEFAULTS["hw"], table: TableOpt = None,
    space: Annotated[str, typer.Option(help="'auto' (derived from the teacher) or a space TOML file.")] = _SEARCH_DEFAULTS["space"],
    strategy: Annotated[str, typer.Option(help="kdnas (the controller), random or evolution.")] = _SEARCH_DEFAULTS["strategy"],
    episodes: Annotated[int, typer.Option(min=1)] = _SEARCH_DEFAULTS["episodes"],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Candidates distilled per episode.")] = _SEARCH_DEFAULTS["top_k"],
    proxy: Annotated[int, typer.Option(min=2, help="Proxy training rows per candidate.")] = _SEARCH_DEFAULTS["proxy"],
    held_out: Annotated[Optional[int], typer.Option("--held-out", min=1, help="Held-out training rows that score candidates.")] = None,
    proxy_epochs: Annotated[int, typer.Option(min=1)] = _SEARCH_DEFAULTS["proxy_epochs"],
    init: InitOpt = _SEARCH_DEFAULTS["init"],
    target_ms: Annotated[Optional[float], typer.Option("--target-ms", help="Latency target in ms on every profile.")] = None,
    speedup: Annotated[Optional[float], typer.Option(help="Latency target as a speedup over the teacher (default 3).")] = None,
    reward: Annotated[str, typer.Option(help="soft (MnasNet) or hard (over the target is rejected).")] = _SEARCH_DEFAULTS["reward"],
    final_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the final full-set distillation.")] = _SEARCH_DEFAULTS["final_epochs"],
    final: Annotated[bool, typer.Option(help="Distil the best candidate on the full training set at the end.")] = _SEARCH_DEFAULTS["final"],
    export_final: Annotated[bool, typer.Option("--export/--no-export", help="Export each final student for every --hw profile.")] = _SEARCH_DEFAULTS["export"],
    calibration: Annotated[int, typer.Option(min=0, help="Whole models timed to calibrate the latency table.")] = _SEARCH_DEFAULTS["calibration"],
    max_params: Annotated[Optional[int], typer.Option("--max-params", min=1, help="Exclude students with more parameters.")] = None,
    max_mb: Annotated[Optional[float], typer.Option("--max-mb", help="Exclude students whose artifact (at each --hw profile's precision) is larger, in MB.")] = None,
    budgets: Annotated[Optional[str], typer.Option("--budgets", help="Latency budgets on the first --hw: ms, an architecture whose latency to match, or a fraction of one, e.g. 5,L3-H384-A12-I1536,L6-H384-A12-I1536/3: each gets its share of the search and one final student.")] = None,
    confirm_rounds: Annotated[int, typer.Option("--confirm-rounds", min=0, help="Rounds that re-time each budget's finalists side by side before the pick (0: by the latency table).")] = _SEARCH_DEFAULTS["confirm_rounds"],
    halving_top: Annotated[int, typer.Option("--halving-top", min=1, help="Per budget, the best confirmed fits that successive halving distils again on more rows before the pick (1: the search's proxy score decides).")] = _SEARCH_DEFAULTS["halving_top"],
    halving_rungs: Annotated[int, typer.Option("--halving-rungs", min=0, help="Halving rungs: each doubles the proxy's training and held-out rows and keeps the better half.")] = _SEARCH_DEFAULTS["halving_rungs"],
    latency_margin: Annotated[float, typer.Option("--latency-margin", min=0, max=0.49, help="A budget's final student must time at most 1 - this of its limit in each of two side-by-side sessions (0.03: 3% under, about this class of host's session-to-session spread).")] = _SEARCH_DEFAULTS["latency_margin"],
    machine: Annotated[list[str], typer.Option("--machine", help="Read the latencies another machine measured: its fingerprint id in --table, as `kdnas-deploy profile` printed it there (a deployment target profiled on itself). Never measured from here; finalists picked by the table. Repeatable, one per --hw; allowed with --resume.")] = [],
    lengths: Annotated[str, typer.Option("--lengths", help="Request lengths every latency is taken under: task (the task's tokenized training rows, capped at --max-length), a file of lengths (one a line, or 'length count'), or fixed (the profile's length).")] = _SEARCH_DEFAULTS["lengths"],
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", min=1, help="Time every latency at this one length instead of a distribution (--lengths fixed at N tokens).")] = None,
    seed: SeedOpt = _SEARCH_DEFAULTS["seed"],
    executor: Annotated[str, typer.Option(help="Where an episode's candidates run: local (one after another) or ray (in parallel).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join ('auto', ray://host:10001); default: start a local one.")] = None,
    ray_cpus: Annotated[float, typer.Option("--ray-cpus", help="CPUs reserved per candidate on Ray.")] = 1.0,
    ray_gpus: Annotated[Optional[float], typer.Option("--ray-gpus", help="GPUs per candidate on Ray (default: 1 where the cluster has GPUs).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its run.json.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the space size, table coverage and a time estimate, then exit.")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", help="All settings in one TOML file; flags given here override it.")] = None,
) -> None:
    """Search the student space: latency from the table, proxy distillation, controller; final student and report."""
    _quiet_libraries()
    from kdnas_deploy.search.executors import make_executor
    from kdnas_deploy.search.finals import reference_text
    from kdnas_deploy.pipeline import run_pipeline
    from kdnas_deploy.search import dry_run as dry_run_module
    from kdnas_deploy.search.settings import load_settings, settings_from

    if resume:
        settings = load_settings(out_dir)
        if machine:  # a run begun on the machine whose table it reads, resumed on another host
            settings.machines = list(machine)
        # Folders that moved since the run started: the run checks that the teacher (its config) and the data (its
        # content) are the ones it began with before it goes on.
        if teacher_path is not None:
            settings.teacher = teacher_path
        if any(v is not None for v in (data_dir, train_file, dev_file)):
            settings.data = {**settings.data, **_source(task, data_dir, train_file, dev_file, text_columns, label_column).to_dict()}
    else:
        values = {
            "teacher": teacher_path, "max_length": max_length, "hw": list(hw), "space": space,
            "table": str(table) if table else None, "seed": seed, "strategy": strategy, "episodes": episodes,
            "top_k": top_k, "proxy": proxy, "held_out": held_out, "proxy_epochs": proxy_epochs, "init": init, "target_ms": target_ms,
            "speedup": speedup, "reward": reward, "calibration": calibration, "final_epochs": final_epochs,
            "final": final, "export": export_final, "max_params": max_params, "max_mb": max_mb,
            "budgets": [b for b in budgets.split(",") if b.strip()] if budgets else None, "confirm_rounds": confirm_rounds,
            "latency_margin": latency_margin, "halving_top": halving_top, "halving_rungs": halving_rungs,
            "machines": list(machine) or None, "lengths": lengths, "seq_len": seq_len,
        }
        # Only what the user typed overrides --config: a flag given with its default's value is still given. (By the
        # source's name: typer carries its own copy of click, whose ParameterSource is not click's.)
        param = {"teacher": "teacher_path", "export": "export_final", "machines": "machine"}
        flags = {k: v for k, v in values.items()
                 if getattr(ctx.get_parameter_source(param.get(k, k)), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
        settings = settings_from(flags, _source(task, data_dir, train_file, dev_file, text_columns, label_column), config)
    if dry_run:
        plan = dry_run_module.dry_run(settings)
        est = plan["estimate_s"]
        out.print(f"space {plan['space']['name']}: {plan['space']['architectures']} architectures; teacher {plan['teacher']}")
        for name, cov in plan["table_coverage"].items():
            timed_at = plan["timed_lengths"].get(name)
            out.print(f"latency table, {escape(name)}: {cov['have']} of {cov['need']} timings present"
                      + (f" (at {', '.join(map(str, timed_at))} tokens)" if timed_at else ""))
            out.print(f"  latency taken at {escape(plan['latency_shape'][name])}", highlight=False)
        out.print(f"{plan['candidates']} candidates x {settings.proxy} proxy rows x {settings.proxy_epochs} epochs; "
                  f"one distillation step of {plan['step_measured_on']} measured at {plan['measured_step_s']:.3f} s")
        out.print(f"estimate: latency table {est['latency_table'] / 60:.0f} min, proxy distillation {est['proxy_distillation'] / 60:.0f} min, "
                  f"successive halving {est['successive_halving'] / 60:.0f} min (at most), "
                  f"final distillation {est['final_distillation'] / 60:.0f} min", highlight=False)
        return
    writable_dir(out_dir, "--out")
    runner = make_executor(executor, ray_address, ray_cpus, ray_gpus)
    timing = _progress()
    timing_task = timing.add_task("latency table", total=None)
    timing_steps = [0, 0]  # builds and sessions: done, planned
    bar = _SearchBar(before=timing)

    def timed(profile_name: str, item: Any, cached: bool) -> None:
        if not timing.live.is_started:
            timing.start()
        timing.update(timing_task, description=f"{escape(profile_name)}: {'cached' if cached else 'timed'} {item[0]} {item[1]}")

    def timing_step(done: int, added: int) -> None:
        if not timing.live.is_started:
            timing.start()
        timing_steps[0] += done
        timing_steps[1] += added
        timing.update(timing_task, completed=timing_steps[0], total=timing_steps[1] or None)

    try:
        report = run_pipeline(settings, out_dir, resume=resume, progress=bar, latency_progress=timed, latency_steps=timing_step,
                            final_progress=_BarProgress("final distillation", before=bar.bar), executor=runner,
                            export_status=lambda msg: console.print(f"export: {escape(msg)}", highlight=False),
                            confirm_status=lambda msg: console.print(f"finalists: {escape(msg)}", highlight=False))
    finally:
        timing.stop()
        bar.stop()
        runner.close()
    out.print(f"best: {report['best']}; report: {escape(str(out_dir / 'report.md'))}")
    for name, shape in (report.get("latency_shape") or {}).items():
        out.print(f"latencies on {escape(name)}: {escape(shape)}", highlight=False)
    for final in report.get("finals", []):
        ref = reference_text(final)
        budget = f" (budget {final['budget_ms']:g} ms{', ' + ref if ref else ''})" if final["budget_ms"] is not None else ""
        if final["arch"] is None:
            out.print(f"no candidate within{budget}")
        else:
            out.print(f"final student {final['arch']}{budget} dev: " + ", ".join(f"{k} {v:.4f}" for k, v in final["dev"].items()),
                      highlight=False)
            for name, art in final.get("artifacts", {}).items():
                out.print(f"  {escape(name)} artifact: " + (escape(art["folder"]) if art["folder"] else f"export failed: {escape(art['error'])}"))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A search run directory.")]) -> None:
    """Regenerate a search run's report from its journal."""
    from kdnas_deploy.search.report import regenerate_report

    result = regenerate_report(run_dir)
    out.print(f"{len(result['candidates'])} candidates, best {result['best']}: {escape(str(run_dir / 'report.md'))}")


# --- ship and serve -------------------------------------------------------------------------------

@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="Model folder (student, teacher or any BERT classifier folder).")],
    hw: Annotated[str, typer.Option("--hw", help="Hardware profile the artifact is for: cpu, cpu-int8, cpu-int8-static, cuda or a .toml path.")] = "cpu-int8",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Artifact folder (default: MODEL_DIR-onnx-HW beside the model).")] = None,
    task: TaskOpt = None, data_dir: DataDirOpt = None, train_file: TrainFileOpt = None, dev_file: DevFileOpt = None,
    text_columns: TextColsOpt = None, label_column: LabelColOpt = None,
    max_drop: Annotated[float, typer.Option("--max-drop", help="Fail if the artifact's dev score is more than this many points below PyTorch's.")] = 1.0,
    table: TableOpt = None,
    measure: Annotated[bool, typer.Option(help="Time the artifact on this machine for the card.")] = True,
    machine: Annotated[Optional[str], typer.Option("--machine", help="Give the card the latency --table holds for another machine (its fingerprint id, as `kdnas-deploy profile` printed it there) instead of this one's; nothing is measured into the table.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact folder.")] = False,
    lengths: Annotated[str, typer.Option("--lengths", help="Request lengths the card's traffic latency (mean, p50, p90) is taken under: task (the training rows), a file of lengths, or fixed (only the profile's one length).")] = "task",
    as_json: Annotated[bool, typer.Option("--json", help="Print the card (kdnas_card.json) on stdout.")] = False,
) -> None:
    """Export a model folder as an optimized ONNX artifact for a hardware profile, checked against PyTorch."""
    _quiet_libraries()
    from kdnas_deploy.artifact.export import export_artifact
    from kdnas_deploy.hardware import load_profile

    profile = load_profile(hw)
    target = out_dir or model_dir.parent / f"{model_dir.resolve().name}-onnx-{profile.name}"
    with progress_status(console, "exporting") as say:
        result = export_artifact(model_dir, profile, target, source=_source(task, data_dir, train_file, dev_file, text_columns, label_column),
                                 max_drop=max_drop, table=table, measure=measure, overwrite=overwrite,
                                 status=lambda msg: say(escape(msg)), machine=machine, lengths=lengths)
    card = result.card
    if as_json:
        print(json.dumps(card, indent=2))
        return
    _print_card(card, result.folder)


def _print_card(card: dict[str, Any], folder: Path) -> None:
    m, lat = card["metrics"], card["latency"]
    out.print(f"[bold]{card['arch']}[/] for {escape(card['profile']['name'])} -> {escape(str(folder / card['file']))} "
              f"({card['size_mb']:.1f} MB)")
    out.print(f"  dev score: PyTorch {100 * m['pytorch_dev']['score']:.2f}, artifact {100 * m['artifact_dev']['score']:.2f} "
              f"(drop {m['drop_points']:.2f} points); fp32 parity {card['parity']['max_abs_diff']:.1e}; "
              f"fused attention {card['fusion']['fused_attention']}/{card['fusion']['layers']}", highlight=False)
    measured = lat.get("measured")
    out.print(f"  latency (batch {lat['batch_size']}, seq {lat['seq_len']}): table {lat['predicted_ms']:.2f} ms"
              + (f" (machine {lat['predicted_machine']})" if lat.get("predicted_machine") else "")
              + (f", measured {measured['median_ms']:.2f} ms (p10 {measured['p10_ms']:.2f}, p90 {measured['p90_ms']:.2f})" if measured else ""),
              highlight=False)
    traffic = lat.get("traffic")
    if traffic:
        pred, meas = traffic.get("predicted"), traffic.get("measured")
        out.print(f"  latency under traffic ({escape(traffic['shape'])}): "
                  + (f"table mean {pred['mean_ms']:.2f} ms, p50 {pred['p50_ms']:.2f}, p90 {pred['p90_ms']:.2f}" if pred
                     else f"table: {escape(traffic.get('predicted_missing', 'none'))}")
                  + (f"; measured mean {meas['mean_ms']:.2f} ms, p50 {meas['p50_ms']:.2f}, p90 {meas['p90_ms']:.2f}" if meas else ""),
                  highlight=False)
    if measured and not measured.get("settled", True):
        out.print(f"  the measurement did not settle (spread {measured['spread']:.0%}): time it against another artifact "
                  "with `kdnas-deploy compare`, whose paired sessions cancel the machine's drift", highlight=False)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="Artifact folder or .onnx file: the one that should be no slower.")],
    b: Annotated[Path, typer.Argument(help="Artifact folder or .onnx file: the reference.")],
    hw: Annotated[Optional[str], typer.Option("--hw", help="Profile to time both with (default: the artifacts' own, which must agree; needed for .onnx files).")] = None,
    sessions: Annotated[int, typer.Option(help="Sessions the comparison should hold (a --record's earlier ones count).", min=1)] = 3,
    every: Annotated[float, typer.Option("--every", help="Minutes from one session's start to the next's: spread them out, a machine's speed drifts over hours.", min=0)] = 0.0,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds per session (A and B once each, fresh ONNX Runtime sessions).", min=1)] = 10,
    record: Annotated[Optional[Path], typer.Option("--record", help="JSON file keeping every session: run again to resume or add sessions.")] = None,
    tolerance: Annotated[float, typer.Option(help="A is within the tolerance of B when the one-sided 95% upper bound of A/B is at most this.", min=1.0)] = 1.03,
    min_sessions: Annotated[int, typer.Option("--min-sessions", help="Sessions a verdict needs.", min=2)] = 6,
    min_hours: Annotated[float, typer.Option("--min-hours", help="Hours from the first session to the last that a verdict needs.", min=0)] = 2.0,
    check: Annotated[bool, typer.Option("--check", help="Exit with status 1 unless A is shown within the tolerance.")] = False,
    lengths: Annotated[Optional[Path], typer.Option("--lengths", help="Request lengths (one a line, or 'length count'): compare expected latencies under that traffic, timed at the lengths that bracket it, instead of at the profile's one length.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Is A within X% of B's latency on this machine? Interleaved timing sessions, spread out; the geometric mean of
    their paired ratios with a one-sided 95% upper bound."""
    from kdnas_deploy.artifact.runtime import artifact_graph
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.compare import compare_graphs

    (a_file, a_profile), (b_file, b_profile) = artifact_graph(a), artifact_graph(b)
    if hw is not None:
        the_profile = load_profile(hw)
    elif a_profile is None or b_profile is None:
        raise KdnasError("give --hw: an .onnx file does not say which hardware profile it was built for")
    elif a_profile.content_hash() != b_profile.content_hash() or a_profile.shape != b_profile.shape:
        raise KdnasError(f"the artifacts were built for different profiles ({a_profile.name}, {b_profile.name}); "
                         "give --hw to time both with one")
    else:
        the_profile = a_profile
    from kdnas_deploy.latency.lengths import LengthDistribution

    traffic = LengthDistribution.read(lengths, the_profile.shape.seq_len) if lengths else None
    with progress_status(console, "comparing") as say:
        result = compare_graphs(a_file, b_file, the_profile, sessions=sessions, rounds=rounds, every_s=every * 60,
                                record=record, labels=(str(a), str(b)), status=lambda m: say(escape(m)),
                                lengths=traffic)
    summary = result.summary(tolerance, min_sessions, min_hours)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        grid = Table("session", "A ms (fastest round)", "B ms (fastest round)", "A / B (paired)")
        for i, s in enumerate(result.sessions):
            grid.add_row(str(i + 1), f"{min(s.a_ms):.2f}", f"{min(s.b_ms):.2f}", f"{s.ratio:.3f}")
        out.print(grid)
        mean, upper = summary["geomean_ratio"], summary["upper_95"]
        out.print(f"A / B on {escape(the_profile.name)} at {escape(summary['shape'])} "
                  f"({escape(str(summary['cpu']))}, {summary['instruction_set']}): "
                  f"geometric mean {mean:.3f}"
                  + (f", one-sided 95% upper bound {upper:.3f}" if upper is not None else "")
                  + f" over {summary['sessions']} sessions in {summary['span_hours']:.2f} h", highlight=False)
        out.print(f"within {tolerance:g}x: {summary['verdict']} ({escape(summary['reason'])})", highlight=False)
    if check and summary["verdict"] != "within":
        sys.exit(1)


@app.command()
def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder from `kdnas-deploy export`.")],
    text: Annotated[Optional[str], typer.Argument(help="Text to classify.")] = None,
    pair: Annotated[Optional[str], typer.Option("--pair", help="Second text, for pair tasks (MNLI, MRPC, ...).")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", help="Many rows: .jsonl (text, text_pair) or .csv/.tsv with those columns.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row on stdout.")] = False,
) -> None:
    """Classify a text (or a file of texts) with an exported artifact."""
    _quiet_libraries()
    from kdnas_deploy.artifact.predict import predict_rows, read_rows
    from kdnas_deploy.artifact.runtime import Artifact

    if (text is None) == (input_file is None):
        raise KdnasError("give a TEXT argument or --input FILE (one of them)")
    if pair is not None and text is None:
        raise KdnasError("--pair goes with a TEXT argument; in --input files use a text_pair column")
    if any(t is not None and not t.strip() for t in (text, pair)):
        raise KdnasError("the text is empty: nothing to classify (`serve` answers it 422 too)")
    model = Artifact(artifact)
    _cpu_note(model)
    rows: list[Any] = read_rows(input_file, model.pair) if input_file else [[text, pair] if pair is not None else text]
    preds = predict_rows(model, rows, batch_size)
    if as_json:
        for row, p in zip(rows, preds):
            first, second = (row, None) if isinstance(row, str) else row
            print(json.dumps({"text": first, **({"text_pair": second} if second is not None else {}), **p.to_dict()}))
        return
    tab = Table(show_header=True)
    for col in ("text", "label" if not model.regression else "value", "score"):
        tab.add_column(col, overflow="fold")
    for row, p in zip(rows, preds):
        shown = row if isinstance(row, str) else f"{row[0]} || {row[1]}"
        tab.add_row(escape(shown[:200]), escape(p.label) if p.label is not None else f"{p.score:.4f}",
                    f"{p.score:.4f}" if p.label is not None else "")
    out.print(tab)


def _cpu_note(model: Any) -> None:
    if model.cpu["note"]:
        console.print(f"[yellow]note:[/] {escape(model.cpu['note'])}", highlight=False, soft_wrap=True)


@app.command()
def serve(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder from `kdnas-deploy export`.")],
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Rows per micro-batch.")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="How long a micro-batch waits to fill (only under load: a lone request on an idle server runs at once).")] = 5.0,
    max_texts: Annotated[int, typer.Option("--max-texts", min=1, help="Texts per request (more: 413).")] = 64,
    max_chars: Annotated[int, typer.Option("--max-chars", min=1, help="Characters per text (more: 413).")] = 4000,
    max_connections: Annotated[int, typer.Option("--max-connections", min=1, help="Open connections at most; requests beyond them get 503.")] = 256,
    header_timeout: Annotated[float, typer.Option("--header-timeout", help="Seconds a client has to send a request's headers, and again its body (x3), before 408.")] = 10.0,
    threads: Annotated[Optional[int], typer.Option(min=0, help="ONNX Runtime threads (default: the profile's; with --engine ray, the cores shared out between replicas).")] = None,
    spinning: Annotated[Optional[bool], typer.Option("--spinning/--no-spinning", help="Override the profile's ONNX Runtime spin-waiting.")] = None,
    engine: Annotated[Engine, typer.Option(help="uvicorn: one process; ray: Ray Serve replicas batched by @serve.batch (pip install 'kdnas-deploy[ray]').")] = Engine.uvicorn,
    replicas: Annotated[int, typer.Option(min=1, help="Replicas with --engine ray.")] = 2,
) -> None:
    """Serve an artifact over HTTP: POST /v1/predict, GET /health, GET /v1/metadata, GET /metrics (Prometheus), docs
    at /docs."""
    from kdnas_deploy.artifact.serve import ServeConfig, serve as run_server

    config = ServeConfig(max_batch, max_wait_ms, max_texts, max_chars, max_connections=max_connections,
                         header_timeout_s=header_timeout, body_timeout_s=3 * header_timeout)
    where = f"on http://{host}:{port} (docs at /docs); Ctrl-C or SIGTERM stops it"
    if engine is Engine.ray:
        from kdnas_deploy.artifact.ray_serve import serve_ray

        console.print(f"serving {escape(str(artifact))} with Ray Serve, {replicas} replica(s), {where}")
        serve_ray(str(artifact), host, port, replicas, config, threads)
        return
    console.print(f"serving {escape(str(artifact))} {where}")
    run_server(str(artifact), host, port, config, threads, spinning=spinning)


@app.command()
def version() -> None:
    """Print the versions of kdnas-deploy and the runtime it measures with."""
    import importlib.metadata as md

    import onnxruntime

    def installed(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    from kdnas_deploy.instruction_set import cpu_model
    from kdnas_deploy.instruction_set import host_instruction_set
    from kdnas_deploy.util.resources import cpu_budget

    print(f"kdnas-deploy {__version__}, torch {installed('torch')}, transformers {installed('transformers')}, "
          f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")
    # The instruction set picks ONNX Runtime's kernels: it is part of every latency-table key and every card.
    print(f"cpu: {cpu_model()} x{cpu_budget()}, {host_instruction_set().describe()}")


#: Packages only training, search and export need; a serve-only install (the base package with the `cpu` or `gpu`
#: extra) lacks them. A command that reaches for one says which extra to install instead of failing half-way.
TRAIN_PACKAGES = ("torch", "transformers", "datasets", "onnx", "onnxscript", "optimum", "scipy", "pandas", "pyarrow",
                  "matplotlib", "safetensors", "huggingface_hub")

#: What `serve --engine ray` and `search --executor ray` import: the `ray` extra.
RAY_PACKAGES = ("ray", "grpc", "aiorwlock")


def _error(message: str, status: int) -> None:
    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(status)


#: click's exception for a command line it cannot parse (typer carries its own copy of click, so found through typer).
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def empty_argument(argv: list[str]) -> str | None:
    """Why the command line holds an empty value, or None. Click reads `--out ""` as the current folder and
    `--teacher ""` as no teacher, so an empty value would search into the working directory or profile the
    default space for twenty minutes; no option of this program takes an empty value."""
    for i, token in enumerate(argv):
        option, eq, value = token.partition("=")
        if token.startswith("--") and eq and not value.strip():
            return f"{option}: the value is empty"
        if not token.strip():
            before = argv[i - 1] if i > 0 else ""
            if before.startswith("-") and "=" not in before:
                return f"{before}: the value is empty"
            return f"argument {i + 1} of the command line is empty"
    return None


def main() -> None:
    _setup_logging()
    empty = empty_argument(sys.argv[1:])
    if empty:
        _error(empty, 2)
    try:
        code = app(standalone_mode=False)
    except KdnasError as exc:
        _error(str(exc), 2)
    except _USAGE_ERROR as exc:  # a missing or malformed flag: one line too, not click's framed panel
        ctx = getattr(exc, "ctx", None)
        if not exc.format_message().strip():  # no arguments at all: the help was shown in its place
            sys.exit(exc.exit_code)
        _error(exc.format_message() + (f" (see {ctx.command_path} --help)" if ctx is not None else ""), exc.exit_code)
    except typer.Abort:
        _error("aborted", 1)
    except KeyboardInterrupt:
        _interrupted()
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in RAY_PACKAGES:
            _error(f"this needs Ray Serve ({exc.name} is not installed): pip install 'kdnas-deploy[ray]'", 2)
        if top == "kdnas_deploy":
            _internal(exc)
        if top not in TRAIN_PACKAGES:  # a base dependency: pip was told --no-deps, or a package was removed since
            _error(f"{exc.name} is not installed, and kdnas-deploy needs it: the environment is incomplete; "
                   "reinstall with pip install 'kdnas-deploy[cpu]' (or '[gpu]')", 2)
        _error(f"this command needs the training packages ({exc.name} is not installed): "
               "pip install 'kdnas-deploy[train]'", 2)
    except MemoryError:
        _error("out of memory: try a smaller architecture, batch size or --max-length", 2)
    except OSError as exc:  # the machine's answer about a path (disk full, permission), named without a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or first_line(exc)}", 2)
    except Exception as exc:  # noqa: BLE001 - a bug of ours, still one line; the traceback is one switch away
        _internal(exc)
    if code == 130:  # typer turns Ctrl-C into this exit status
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _internal(exc: BaseException) -> None:
    if os.environ.get("KDNAS_DEBUG"):
        raise exc
    _error(f"internal error ({type(exc).__name__}: {first_line(exc)}); set KDNAS_DEBUG=1 for the traceback and "
           "please report it", 1)


def _interrupted() -> None:
    console.print("interrupted; finished work is kept (timings in the table, epochs in checkpoints): run again to resume",
                  highlight=False, soft_wrap=True)
    sys.exit(130)


if __name__ == "__main__":
    main()
