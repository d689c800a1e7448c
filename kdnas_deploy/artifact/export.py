"""`export`: a model folder -> the deployable artifact for one hardware profile, checked before it is written.

The graph is made by `build_profile_graph`, the function whose output the latency table times, so the latency
in the card is the latency of this file. Checks, in order, each a one-line error that leaves no artifact:
- fusion on the fp32 graph (one fused attention node per layer; an unfused graph is shipped with a warning);
- parity: the fp32 graph against PyTorch on real dev rows at several batch sizes and lengths;
- accuracy: the profile's graph (int8, fp16) scored on the dev split against the PyTorch model; a drop above
  `max_drop` points of the task's primary score fails the export.
The folder is assembled beside its destination and renamed in, so a failed or killed export leaves nothing
half-written where a server might load it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdnas_deploy.artifact.card import render_card
from kdnas_deploy.artifact.runtime import CARD_FILE, onnx_logits
from kdnas_deploy.data.sources import DataSource
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.util.files import writable_dir
from kdnas_deploy.fingerprint import machine_fingerprint
from kdnas_deploy.instruction_set import INFO_KEY
from kdnas_deploy.hardware import HardwareProfile, Precision
from kdnas_deploy.model_folder import read_info, versions, write_json_atomic, write_text_atomic
from kdnas_deploy.space import StudentArch

log = logging.getLogger(__name__)

#: Largest |logit difference| allowed between the fp32 graph and PyTorch.
PARITY_TOLERANCE = 1e-4
#: (batch size, rows taken from) for the parity check: short, mixed and the longest dev rows.
PARITY_CASES = ((1, "shortest"), (1, "longest"), (4, "mixed"), (16, "longest"))
DEFAULT_MAX_DROP = 1.0
#: Decimals of a point the accuracy gate compares at. A score is a count of rows over the dev rows, and floating
#: point is not: 100 * (0.65 - 0.64) is 1.0000000000000009, so 3 rows of 300 would fail --max-drop 1. At 6 decimals
#: one row still counts on a dev split of up to 10^8 rows.
DROP_DECIMALS = 6
#: Rows per batch when the card's dev scores are computed (length-sorted, so little padding).
SCORE_BATCH = 64
#: Which training rows calibrate a static int8 graph: fixed, so an export is repeatable.
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    card: dict[str, Any]


def export_artifact(
    model_dir: str | Path, profile: HardwareProfile, out: str | Path, *, source: DataSource | None = None,
    max_drop: float = DEFAULT_MAX_DROP, table: str | Path | None = None, measure: bool = True,
    search_run: str | Path | None = None, overwrite: bool = False, status: Callable[[str], None] | None = None,
    machine: str | None = None, lengths: str | Path | None = "task",
) -> ExportResult:
    """Exports `model_dir` (a folder with kdnas.json, or any BERT classifier folder with `source` given) for
    `profile` into `out` and returns the card it wrote. `machine` (a fingerprint id in `table`) gives the card the
    latency the table holds for that machine, the deployment target, instead of filling this host's rows; the
    artifact is still timed here when `measure`."""
    from kdnas_deploy.data.prepare import check_fits_task, prepare, source_from_teacher
    from kdnas_deploy.distill.evaluation import evaluate_model
    from kdnas_deploy.latency.graph import FP32_FILE, build_profile_graph
    from kdnas_deploy.latency.lengths import named_lengths
    from kdnas_deploy.latency.timing import make_session
    from kdnas_deploy.model_folder import load_classifier
    from kdnas_deploy.data.tasks import compute_metrics
    from kdnas_deploy.teacher_config import load_teacher_config

    say = status or (lambda _msg: None)
    model_dir, out = Path(model_dir).resolve(), Path(out).resolve()
    if not model_dir.is_dir():
        raise KdnasError(f"{model_dir}: no such model folder")
    if out.exists() and not out.is_dir():
        raise KdnasError(f"--out {out}: is a file, not a folder")
    writable_dir(out.parent, "--out")  # the artifact is written beside it first, then moved in
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise KdnasError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    if max_drop < 0:
        raise KdnasError(f"--max-drop must be zero or more points, got {max_drop}")
    profile.check_runnable()
    # The model first: a GPT-2 folder is "not a BERT model", not "no data" (it records no task either).
    load_teacher_config(str(model_dir), what="model")
    info = read_info(model_dir)
    source = source_from_teacher(str(model_dir), source or DataSource())
    max_length = info.max_length if info else 128
    say("loading the model and the dev split")
    model = load_classifier(str(model_dir), attn_implementation="eager")  # the graph ORT fuses
    prepared = prepare(str(model_dir), source, max_length)
    task, dev = prepared.task, prepared.encoded.dev
    pad = prepared.encoded.pad_token_id
    check_fits_task(model, task, str(model_dir), "give the data options of the task it was trained on")
    arch = StudentArch.from_config(model.config)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        say(f"exporting {arch} for {profile.name} ({profile.precision.value})")
        calibration, calibration_rows = None, min(profile.model.calibration_rows, len(prepared.encoded.train))
        if profile.model.activations == "static":
            from kdnas_deploy.latency.quantization import row_batches

            say(f"calibrating int8 activation scales on {calibration_rows} training rows")
            calibration = row_batches(prepared.encoded.train, calibration_rows, seed=CALIBRATION_SEED)
        graph = build_profile_graph(model, profile, work, keep_fp32=True, calibration=calibration)
        say("checking the fp32 graph against PyTorch")
        parity = check_parity(model, work / FP32_FILE, dev, pad)
        if parity["max_abs_diff"] > PARITY_TOLERANCE:
            raise KdnasError(f"the fp32 graph differs from PyTorch by {parity['max_abs_diff']:.2e} in a logit "
                             f"(limit {PARITY_TOLERANCE:.0e}): the export is wrong; not writing {out}")
        if graph.path.name != FP32_FILE:
            (work / FP32_FILE).unlink()
        say(f"scoring PyTorch and the artifact on {len(dev)} dev rows")
        torch_metrics = evaluate_model(model, dev, task, SCORE_BATCH, pad)
        session = make_session(graph.path, profile)
        onnx_metrics = compute_metrics(task, onnx_logits(session, dev, SCORE_BATCH, pad), np.asarray(dev["labels"]))
        del session
        drop = drop_points(torch_metrics["score"], onnx_metrics["score"])
        if drop > max_drop:
            raise KdnasError(f"the {profile.precision.value} artifact scores {100 * onnx_metrics['score']:.2f} on dev against "
                             f"{100 * torch_metrics['score']:.2f} for PyTorch: a drop of {drop:.2f} points is above "
                             f"--max-drop {max_drop:g}; not writing {out}")
        latency = _latency(arch, profile, graph.path, model.config.vocab_size, table, measure, say, machine)
        traffic = named_lengths(lengths, prepared.encoded.train, task.name, max_length)
        if traffic is not None:
            latency["traffic"] = _traffic_latency(arch, profile, graph.path, model.config.vocab_size, table, measure,
                                                  say, machine, traffic)
        model.config.save_pretrained(work)
        prepared.tokenizer.save_pretrained(work)
        card = {
            "format": 1,
            "name": f"{arch} {task.name} {profile.name}",
            "file": graph.path.name,
            "arch": str(arch),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "size_mb": round(graph.path.stat().st_size / 1e6, 3),
            "kind": info.kind if info else "model",
            "teacher": info.teacher if info else None,
            "init": info.init if info else None,
            "task": task.name,
            "pair": task.is_pair,
            "regression": task.is_regression,
            "label_names": list(task.label_names) if not task.is_regression else [],
            "max_length": max_length,
            "data": {**source.to_dict(), "origin": prepared.data.origin, "dev_rows": len(dev)},
            "metrics": {"pytorch_dev": torch_metrics, "artifact_dev": onnx_metrics, "drop_points": drop,
                        "max_drop_points": max_drop},
            "parity": parity,
            "fusion": {"fused_attention": graph.fused_attention, "layers": graph.layers, "fused": graph.fused,
                       "operators": graph.fusion_stats},
            "quantization": _quantization(profile, calibration_rows),
            "profile": {"name": profile.name, "precision": profile.precision.value, "content_hash": profile.content_hash(),
                        "definition": profile.model_dump(mode="json")},
            "latency": latency,
            "source_model": str(model_dir),
            "search_run": str(Path(search_run).resolve()) if search_run else _search_run_of(model_dir),
            "training": info.training if info else {},
            "versions": {**versions(), **_runtime_versions()},
            "fingerprint": machine_fingerprint(profile),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_text_atomic(work / "README.md", render_card(card))
        write_json_atomic(work / CARD_FILE, card)  # last: its presence marks a complete artifact
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(out, card)


def drop_points(reference: float, candidate: float) -> float:
    """How many points of the primary score `candidate` loses against `reference` (both in 0..1), at the precision
    the gate compares (`DROP_DECIMALS`): a drop of exactly --max-drop passes on every host."""
    return round(100.0 * (reference - candidate), DROP_DECIMALS)


def check_parity(model: Any, fp32_graph: Path, dev: Any, pad_token_id: int) -> dict[str, Any]:
    """Max |logit difference| between the fp32 graph (CPU, fp32) and PyTorch over dev batches of several shapes."""
    import onnxruntime as ort
    import torch

    from kdnas_deploy.artifact.runtime import feeds_for
    from kdnas_deploy.data.encode import MODEL_INPUTS, collate

    lengths = np.array([len(ids) for ids in dev["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    rng = np.random.default_rng(0)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(fp32_graph), so, providers=["CPUExecutionProvider"])
    worst, cases = 0.0, []
    for batch_size, pick in PARITY_CASES:
        n = min(batch_size, len(order))
        rows = {"shortest": order[:n], "longest": order[-n:],
                "mixed": rng.choice(order, size=n, replace=False)}[pick]
        batch = collate([dev[int(i)] for i in rows], pad_token_id)
        with torch.inference_mode():
            expected = model(**{k: batch[k] for k in MODEL_INPUTS}).logits.float().numpy()
        got = session.run(["logits"], feeds_for(session, {k: batch[k].numpy() for k in MODEL_INPUTS}))[0]
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        cases.append({"batch": n, "seq_len": int(batch["input_ids"].shape[1]), "max_abs_diff": diff})
    return {"max_abs_diff": worst, "tolerance": PARITY_TOLERANCE, "cases": cases}


def _latency(arch: StudentArch, profile: HardwareProfile, path: Path, vocab_size: int, table: str | Path | None,
             measure: bool, say: Callable[[str], None], machine: str | None = None) -> dict[str, Any]:
    """Predicted by the latency table (measuring missing blocks, unless it is another `machine`'s) and measured on
    this file, side by side."""
    from kdnas_deploy.latency.predictor import LatencyModel, items_for
    from kdnas_deploy.latency.profiler import profile_items
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.latency.timing import time_graph

    shape = {"batch_size": profile.shape.batch_size, "seq_len": profile.shape.seq_len}
    say(f"latency of {arch} from the table")
    with LatencyTable(Path(table) if table else default_table_path()) as tbl:
        model = LatencyModel(tbl, profile, machine=machine)
        if model.measure_missing and model.missing(items_for(arch)):
            # Rows the table lacks are timed as `profile` times them (sessions spread out, each bracketed by the
            # probe, more sessions where it says the machine is slowed), not back to back on demand.
            say(f"timing the table rows {arch} needs")
            filled = profile_items(model, items_for(arch))
            if filled.noisy:
                log.warning("latency-table rows for %s were timed while the machine stayed slowed (flagged noisy): "
                            "the card's table latency may read high", arch)
        predicted = model.predict(arch)
    result: dict[str, Any] = {**shape, "predicted_ms": round(predicted.ms, 4), "predicted_from": predicted.source}
    if model.elsewhere:  # the deployment target's latency, not this host's (which `measured` is)
        result["predicted_machine"] = model.fingerprint
        # What serving compares its CPU with: the target's instruction set picked the kernels behind this latency.
        result["predicted_machine_info"] = {k: model.info.get(k) for k in ("cpu", "cpu_count", "gpu", "machine", INFO_KEY)
                                            if k in model.info}
    if measure:
        say(f"timing the artifact ({profile.timing.sessions} sessions)")
        t = time_graph(path, profile, vocab_size=vocab_size)
        result["measured"] = {"median_ms": round(t.median_ms, 4), "p10_ms": round(t.p10_ms, 4), "p90_ms": round(t.p90_ms, 4),
                              "spread": round(t.spread, 4), "sessions": t.sessions, "session_range": round(t.session_range, 4),
                              # A GPU at batch 1 runs for a fraction of a millisecond, and host jitter can leave a session
                              # bimodal: the median then says little, and the card says so.
                              "settled": t.spread <= profile.timing.max_spread}
        # Two machines' milliseconds are not a prediction and its error: the ratio only means something on one.
        if not model.elsewhere:
            result["predicted_over_measured"] = round(predicted.ms / t.median_ms, 4) if t.median_ms > 0 else None
    return result


def _traffic_latency(arch: StudentArch, profile: HardwareProfile, path: Path, vocab_size: int,
                     table: str | Path | None, measure: bool, say: Callable[[str], None], machine: str | None,
                     lengths: Any) -> dict[str, Any]:
    """Latency under the request lengths: the table's expected, p50 and p90 (timing the rows it lacks at the lengths
    that bracket the distribution) and, when `measure`, the artifact timed at those lengths in the profile's sessions
    and combined the same way."""
    from kdnas_deploy.latency.lengths import interpolate
    from kdnas_deploy.latency.predictor import items_for
    from kdnas_deploy.latency.profiler import profile_items
    from kdnas_deploy.latency.table import LatencyTable, default_table_path
    from kdnas_deploy.latency.timing import combine_sessions, time_graph_lengths, weighted_ms
    from kdnas_deploy.latency.traffic import TrafficLatency

    with LatencyTable(Path(table) if table else default_table_path()) as tbl:
        traffic = TrafficLatency(tbl, profile, lengths, machine=machine)
        say(f"latency of {arch} under {lengths.describe()}")
        lacking = [m.seq_len for m in traffic.by_length() if m.missing(items_for(arch))]
        out: dict[str, Any] = {
            "shape": traffic.shape(), "batch_size": profile.shape.batch_size, "lengths": lengths.to_dict(),
            "padded_mean": round(traffic.padded.mean(), 3), "nodes": list(traffic.nodes),
        }
        if machine is not None and lacking and traffic.by_length()[0].elsewhere:
            # The deployment target's table was filled at fixed lengths: say so on the card rather than fail an
            # export whose fixed-length latency is there.
            out["predicted_missing"] = (f"machine {machine}'s table has no timings at {', '.join(map(str, lacking))} "
                                        "tokens: run `kdnas-deploy profile --lengths FILE` there")
        else:
            for model in traffic.by_length():
                if model.measure_missing and model.missing(items_for(arch)):
                    say(f"timing the table rows {arch} needs at {model.seq_len} tokens")
                    profile_items(model, items_for(arch))
            pred = traffic.predict(arch)
            out["predicted"] = {"mean_ms": round(pred.mean_ms, 4), "p50_ms": round(pred.p50_ms, 4),
                                "p90_ms": round(pred.p90_ms, 4)}
    if measure:
        say(f"timing the artifact at {', '.join(map(str, traffic.nodes))} tokens ({profile.timing.sessions} sessions)")
        sessions = [time_graph_lengths(path, profile, traffic.nodes, seed=s, vocab_size=vocab_size)
                    for s in range(profile.timing.sessions)]
        combined = {n: combine_sessions([s[n] for s in sessions]) for n in traffic.nodes}
        node_ms = tuple(combined[n].median_ms for n in traffic.nodes)
        out["measured"] = {
            "mean_ms": round(weighted_ms(combined, traffic.weights()), 4),
            "p50_ms": round(interpolate(traffic.padded.quantile(0.5), traffic.nodes, node_ms), 4),
            "p90_ms": round(interpolate(traffic.padded.quantile(0.9), traffic.nodes, node_ms), 4),
            "node_ms": {str(n): round(ms, 4) for n, ms in zip(traffic.nodes, node_ms)},
            "sessions": profile.timing.sessions,
        }
    return out


def _quantization(profile: HardwareProfile, calibration_rows: int) -> dict[str, Any] | None:
    """What a reader needs to reproduce the int8 graph (None for fp32 and fp16)."""
    m = profile.model
    if profile.precision is not Precision.int8:
        return None
    out: dict[str, Any] = {"weights": "int8, symmetric, " + ("per channel" if m.per_channel else "per tensor"),
                           "reduce_range": m.reduce_range, "activations": m.activations,
                           "quantizer": "onnxruntime.quantization.quantize_dynamic"}
    if m.activations == "static":
        out["quantizer"] += ", activation scales fixed by kdnas_deploy.latency.quantization"
        out["calibration"] = {"method": "minmax", "split": "train", "rows": calibration_rows,
                              "seed": CALIBRATION_SEED, "ranges": "onnxruntime.quantization.calibrate (MinMax)"}
    return out


def _search_run_of(model_dir: Path) -> str | None:
    """A final student lives in RUN/students/ARCH: name the run it came from."""
    run = model_dir.parent.parent
    return str(run) if model_dir.parent.name == "students" and (run / "run.json").is_file() else None


def _runtime_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}
