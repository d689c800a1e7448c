"""The artifact's model card: README.md for people (Hugging Face front matter, tables), rendered from the JSON card."""

from __future__ import annotations

from typing import Any

from kdnas_deploy.distill import INIT_DESCRIPTIONS
from kdnas_deploy.instruction_set import describe_info


def _metrics_row(name: str, metrics: dict[str, float], keys: list[str]) -> str:
    return f"| {name} | " + " | ".join(f"{100 * metrics[k]:.2f}" for k in keys) + " |"


def render_card(card: dict[str, Any]) -> str:
    m = card["metrics"]
    keys = [k for k in m["pytorch_dev"] if k != "score"] + ["score"]
    lat = card["latency"]
    measured = lat.get("measured")
    prof = card["profile"]
    fusion = card["fusion"]
    lines = [
        "---",
        "library_name: onnx",
        "pipeline_tag: text-classification",
        "tags: [onnx, onnxruntime, knowledge-distillation, kdnas-deploy, " + prof["precision"] + "]",
        "---",
        "",
        f"# {card['arch']} for {card['task']} ({prof['name']}, {prof['precision']})",
        "",
        f"A BERT-architecture {'student' if card['kind'] == 'student' else card['kind']} exported by kdnas-deploy as "
        f"`{card['file']}` ({card['size_mb']:.1f} MB, {card['parameters']:,} parameters) for the `{prof['name']}` hardware "
        "profile, with its tokenizer and `config.json`. Machine-readable card: `kdnas_card.json`.",
        "",
        f"- Teacher: `{card['teacher']}`" if card.get("teacher") else "- Teacher: none recorded",
        *([f"- Initialisation (`--init {card['init']}`): {INIT_DESCRIPTIONS.get(card['init'], card['init'])}"]
          if card.get("init") else []),
        f"- Task: {card['task']}" + (f"; labels: {', '.join(card['label_names'])}" if card["label_names"] else " (regression)"),
        f"- Maximum sequence length: {card['max_length']} tokens",
        f"- Search run: `{card['search_run']}`" if card.get("search_run") else "- Search run: none (exported directly)",
        f"- Source model folder: `{card['source_model']}`",
        "",
        f"## Dev-split metrics ({card['data']['dev_rows']} rows)",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        _metrics_row("PyTorch (fp32)", m["pytorch_dev"], keys),
        _metrics_row(f"this artifact ({prof['precision']})", m["artifact_dev"], keys),
        "",
        f"Drop of the primary score: {m['drop_points']:.2f} points (limit {m['max_drop_points']:g}). The fp32 graph matched "
        f"PyTorch to {card['parity']['max_abs_diff']:.1e} in the logits (limit {card['parity']['tolerance']:.0e}) on "
        f"{len(card['parity']['cases'])} dev batches of batch size and length "
        + ", ".join(f"{c['batch']}x{c['seq_len']}" for c in card["parity"]["cases"]) + ".",
        "",
        f"## Latency (batch {lat['batch_size']}, sequence {lat['seq_len']})",
        "",
        "| source | median ms | p10 ms | p90 ms |",
        "|---|---|---|---|",
        f"| latency table ({lat['predicted_from']}"
        + (f", timed on machine {lat['predicted_machine']}, {_machine_words(lat.get('predicted_machine_info'))}"
           if lat.get("predicted_machine") else "")
        + f") | {lat['predicted_ms']:.3f} | | |",
    ]
    if measured:
        lines.append(f"| measured at export (the fastest of {measured['sessions']} sessions) | {measured['median_ms']:.3f} | "
                     f"{measured['p10_ms']:.3f} | {measured['p90_ms']:.3f} |")
        if not measured.get("settled", True):
            lines += ["", f"The measurement at export did not settle (p10 to p90 spread {measured['spread']:.0%}): read its "
                      "median as a rough figure; `kdnas-deploy compare` gives a paired ratio against another artifact."]
    traffic = lat.get("traffic")
    if traffic:
        pred, meas, dist = traffic.get("predicted"), traffic.get("measured"), traffic["lengths"]
        lines += ["", f"### Latency under traffic (batch {traffic['batch_size']}, request lengths from {dist['source']})", "",
                  f"A server pads each batch to its longest row. Request lengths: mean {dist['mean']:.1f} tokens, p50 "
                  f"{dist['p50']}, p90 {dist['p90']}, p99 {dist['p99']} (capped at {dist['cap']}); a batch runs at "
                  f"{traffic['padded_mean']:.1f} tokens on average. Timed at {', '.join(map(str, traffic['nodes']))} "
                  "tokens, interpolated between.", "",
                  "| source | mean ms | p50 ms | p90 ms |", "|---|---|---|---|"]
        if pred:
            lines.append(f"| latency table | {pred['mean_ms']:.3f} | {pred['p50_ms']:.3f} | {pred['p90_ms']:.3f} |")
        else:
            lines.append(f"| latency table | {traffic.get('predicted_missing', 'not in the table')} | | |")
        if meas:
            lines.append(f"| measured at export (the fastest of {meas['sessions']} sessions per length) | "
                         f"{meas['mean_ms']:.3f} | {meas['p50_ms']:.3f} | {meas['p90_ms']:.3f} |")
    fp = card["fingerprint"]
    quant = card.get("quantization")
    if quant:
        cal = quant.get("calibration")
        lines += ["", f"Quantization: weights {quant['weights']}" + (", reduced range" if quant["reduce_range"] else "") + "; "
                  + (f"activations static, scales from the {cal['method']} ranges of {cal['rows']} {cal['split']} rows "
                     f"(seed {cal['seed']}): an answer does not depend on the batch it is served in."
                     if cal else "activations dynamic, scaled per batch at run time: an answer can change slightly "
                     "with the texts it is batched with.")]
    lines += [
        "",
        f"Fusion: {fusion['fused_attention']} fused attention nodes for {fusion['layers']} layers"
        + ("" if fusion["fused"] else " (NOT fully fused: slower than the table assumes)") + ".",
        f"Scores and measured latency from: {_machine_words(fp)}; ONNX Runtime {fp.get('onnxruntime')}. ONNX Runtime "
        "picks its kernels by instruction set: on another one, timings differ and int8 scores can move slightly "
        "(`predict` and `serve` say so when they run on one).",
        "",
        "## Use",
        "",
        "```bash",
        _install_line(card),
        "kdnas-deploy predict THIS_FOLDER \"a sentence\"" + (" --pair \"a second sentence\"" if card["pair"] else ""),
        "kdnas-deploy serve THIS_FOLDER --port 8000   # POST /v1/predict; GET /metrics for Prometheus",
        "```",
        "",
        "```python",
        "from optimum.onnxruntime import ORTModelForSequenceClassification",
        "from transformers import AutoTokenizer, pipeline",
        f"model = ORTModelForSequenceClassification.from_pretrained(\"THIS_FOLDER\", file_name=\"{card['file']}\")",
        "classifier = pipeline(\"text-classification\", model=model, tokenizer=AutoTokenizer.from_pretrained(\"THIS_FOLDER\"))",
        "```",
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in card["versions"].items()) + f"; created {card['created']}.",
        "",
    ]
    return "\n".join(lines)


def _machine_words(info: dict[str, Any] | None) -> str:
    """`AMD EPYC (2 logical CPUs, AVX512-VNNI)`, and the GPU where there is one."""
    info = info or {}
    return (f"{info.get('cpu', 'an unrecorded CPU')} ({info.get('cpu_count', '?')} logical CPUs, {describe_info(info)})"
            + (f", GPU {info['gpu']}" if info.get("gpu") else ""))


def _install_line(card: dict[str, Any]) -> str:
    """The serving install (no torch or transformers) with the ONNX Runtime build and version the latency above was
    measured with: another version may fuse or schedule the graph differently."""
    runtime = card["profile"].get("definition", {}).get("runtime", {})
    gpu = runtime.get("provider") == "CUDAExecutionProvider"
    package = "onnxruntime-gpu" if gpu else "onnxruntime"
    version = card.get("versions", {}).get("onnxruntime")
    pin = f" '{package}=={version}'" if version else ""
    return f"pip install 'kdnas-deploy[{'gpu' if gpu else 'cpu'}]'{pin}"
