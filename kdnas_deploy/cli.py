"""The `kdnas-deploy` command line: argument parsing and display over the library API."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kdnas_deploy import __version__
from kdnas_deploy.errors import KdnasError

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


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
    )


HwOpt = Annotated[list[str], typer.Option("--hw", help="Hardware profile: shipped name (cpu, cpu-int8, cuda) or a .toml path. Repeatable.")]
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
    references: Annotated[bool, typer.Option(help="Predict the reference shapes (BERT-base, 6x384, 4x312).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Fill the latency lookup table for a search space on hardware profiles, and summarise it."""
    from kdnas_deploy.hardware import load_profile
    from kdnas_deploy.latency.profiler import plan, profile_items, summarize, verify_sample
    from kdnas_deploy.latency.profiler import verify as run_verify
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
    table_path = table or default_table_path()
    summaries = []
    with LatencyTable(table_path) as tbl:
        for prof in profiles:
            model = LatencyModel(tbl, prof)
            refs = [*(REFERENCE_ARCHS if references else ()), *extra] + ([teacher_arch] if teacher_arch else [])
            items = plan(the_space, calibration, seed) + [it for a in refs for it in items_for(a)]
            with _progress() as bar:
                task = bar.add_task(f"{escape(prof.name)}: timing", total=len(dict.fromkeys(items)))

                def tick(item: Any, cached: bool) -> None:
                    bar.update(task, advance=1, description=f"{escape(prof.name)}: {'cached' if cached else 'timed'} {item[0]} {item[1]}")

                result = profile_items(model, items, seed=seed, progress=tick)
            rows = []
            if verify:
                sample = verify_sample(model, the_space, verify, seed + 1)
                with _progress() as bar:
                    task = bar.add_task(f"{escape(prof.name)}: verifying", total=len(sample))
                    rows = run_verify(model, sample, progress=lambda a: bar.update(task, advance=1))
            summary = summarize(model, the_space, result, refs, rows, teacher=teacher_arch)
            summaries.append(summary)
            if not as_json:
                _print_summary(summary)
    if as_json:
        print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2))


def _print_summary(s: dict[str, Any]) -> None:
    t = s["timings"]
    m = s["machine"]
    out.print(
        f"[bold]{escape(s['profile'])}[/] ({s['precision']}, batch {s['batch']}, seq {s['seq_len']}) on "
        f"{m.get('gpu') or m['cpu']} x{m['cpu_count']}, onnxruntime {m['onnxruntime']}; fingerprint {s['fingerprint']}"
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
    )
    c = s["calibration"]
    out.print(f"calibration: measured = {c['scale']:.3f} x composed ^ {c['exponent']:.3f} ({c['points']} whole models)")
    tab = Table(title="predicted latency")
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


@app.command()
def version() -> None:
    """Print the versions of kdnas-deploy and the runtime it measures with."""
    import onnxruntime
    import torch
    import transformers

    print(f"kdnas-deploy {__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")


def main() -> None:
    _setup_logging()
    try:
        app()
    except KdnasError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; finished timings are kept in the table")
        sys.exit(130)


if __name__ == "__main__":
    main()
