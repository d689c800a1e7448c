"""One function turns a model into the graph a profile runs: export -> optimize -> precision.

The latency table times what `build_profile_graph` writes, and the shipped artifact is written by
the same function, so what is timed is what is shipped.

Why these choices:
- TorchScript exporter (`dynamo=False`) of an eager-attention model: ONNX Runtime's transformer
  optimizer recognises its attention subgraph and fuses it into one `Attention` node per layer; the
  dynamo exporter's and sdpa graphs stay unfused and run markedly slower.
- int8 is quantization of the *fused* graph (`latency.quantization`): dynamic, or static with activation
  scales calibrated on rows the caller gives (the task's training rows for an artifact; random token ids for
  the latency table's random-weight stand-ins, whose speed does not depend on the scales).
- fp16 keeps fp32 inputs/outputs (`keep_io_types`) so callers feed the same tensors on every profile.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.hardware import HardwareProfile, Precision
from kdnas_deploy.space import BERT_MAX_POSITIONS, BERT_TYPE_VOCAB, BERT_VOCAB_SIZE, StudentArch

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("logits",)
_DYNAMIC_AXES = {name: {0: "batch_size", 1: "sequence_length"} for name in INPUT_NAMES} | {
    "logits": {0: "batch_size"}
}

FP32_FILE = "model_optimized.onnx"
FILE_FOR_PRECISION = {Precision.fp32: FP32_FILE, Precision.int8: "model_quantized.onnx", Precision.fp16: "model_fp16.onnx"}


@dataclass(frozen=True)
class ProfileGraph:
    """The graph a profile runs, with the evidence that fusion happened."""

    path: Path
    precision: Precision
    layers: int
    fused_attention: int
    fusion_stats: dict[str, int] = field(default_factory=dict)

    @property
    def fused(self) -> bool:
        return self.fused_attention == self.layers


def random_model(
    arch: StudentArch, num_labels: int = 2, seq_len: int = BERT_MAX_POSITIONS, seed: int = 0,
    vocab_size: int = BERT_VOCAB_SIZE,
) -> Any:
    """A random-weight BERT classifier of this shape; weights do not change latency."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        intermediate_size=arch.ffn,
        max_position_embeddings=max(BERT_MAX_POSITIONS, seq_len),
        type_vocab_size=BERT_TYPE_VOCAB,
        num_labels=num_labels,
    )
    return random_weights(config, seed)


def random_weights(config: Any, seed: int = 0) -> Any:
    """A classifier of `config` (any BERT-family configuration) with random weights, in eager attention.

    Every weight is drawn at random, LayerNorm scales and biases included: freshly initialised, those are all
    ones or all zeros, and the exporter folds equal tensors into one, which gives a graph with shared inputs and
    extra DequantizeLinear nodes that a trained model's graph does not have (`graph_signature` tells them apart).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    ensure_graph_fits(StudentArch.from_config(config), config.vocab_size, config.max_position_embeddings,
                      config.type_vocab_size, config.num_labels)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    return model


#: Peak bytes per parameter while a graph is built: fp32 weights in torch, in the exported proto, and in the
#: optimizer's and quantizer's copies.
GRAPH_BYTES_PER_PARAMETER = 16


def ensure_graph_fits(arch: StudentArch, vocab_size: int = BERT_VOCAB_SIZE, max_positions: int = BERT_MAX_POSITIONS,
                      type_vocab: int = BERT_TYPE_VOCAB, num_labels: int = 2) -> None:
    """One line, before anything is allocated, when building `arch`'s graph cannot fit in this machine's memory."""
    from kdnas_deploy.util.resources import ensure_memory

    params = arch.parameter_count(vocab_size, max_positions, type_vocab, num_labels)
    ensure_memory(GRAPH_BYTES_PER_PARAMETER * params, f"building the graph of {arch} ({params / 1e6:,.0f}M parameters)")


_BYTES_PER_WEIGHT = {Precision.fp32: 4, Precision.fp16: 2, Precision.int8: 1}


def artifact_megabytes(
    arch: StudentArch, precision: Precision, *, vocab_size: int = BERT_VOCAB_SIZE, max_positions: int = BERT_MAX_POSITIONS,
    type_vocab: int = BERT_TYPE_VOCAB, num_labels: int = 2,
) -> float:
    """Size in MB (10^6 bytes) of the graph `build_profile_graph` writes for `arch`, known before building it.

    Every weight is stored at the profile's precision: dynamic int8 quantizes the embeddings
    (EmbedLayerNormalization) as well as every MatMul and Attention weight, and keeps the encoder's biases and
    LayerNorm scales and the pooler's bias in fp32, which the last term adds back. Within 1% (or 40 KB of graph
    structure for tiny models) of the real files, checked in tests; 0.02% for a trained MiniLM-L6.
    """
    params = arch.parameter_count(vocab_size, max_positions, type_vocab, num_labels)
    size = params * _BYTES_PER_WEIGHT[precision]
    if precision is Precision.int8:
        # fp32, per layer: biases of qkv, attention out, FFN in and out (5h + ffn), two LayerNorms (4h); the pooler bias
        size += 3 * (arch.layers * (9 * arch.hidden + arch.ffn) + arch.hidden)
    return size / 1e6


def export_onnx(model: Any, path: Path, opset: int) -> Path:
    """TorchScript export with dynamic batch and sequence axes."""
    import torch

    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        raise KdnasError(
            "the model must be loaded with attn_implementation='eager' for export: "
            "ONNX Runtime fuses attention only in the eager graph"
        )
    ids = torch.ones((1, 8), dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated upstream but is the one whose graphs fuse; its
        # deprecation and tracer warnings would drown the progress output.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), args, str(path), dynamo=False, input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), dynamic_axes=_DYNAMIC_AXES, opset_version=opset,
            do_constant_folding=True,
        )
    return path


def _optimize(raw: Path, out: Path, profile: HardwareProfile, arch: StudentArch) -> tuple[int, dict[str, int]]:
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimizer.optimize_model(
        str(raw), model_type="bert", num_heads=arch.heads, hidden_size=arch.hidden,
        opt_level=0, use_gpu=profile.uses_gpu,
    )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(out))
    return stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0), stats


def _to_fp16(fp32: Path, out: Path) -> None:
    from onnxruntime.transformers.onnx_model import OnnxModel
    import onnx

    model = OnnxModel(onnx.load(str(fp32)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out))


def build_profile_graph(
    model: Any, profile: HardwareProfile, out_dir: str | os.PathLike[str], *, keep_fp32: bool = False,
    calibration: Iterable[Mapping[str, Any]] | None = None,
) -> ProfileGraph:
    """Export `model` (a BERT-family classifier) and turn it into the graph `profile` runs.

    The fusion check is made on the fp32 graph, before precision changes: one fused attention
    node per encoder layer. An unfused graph is still returned (it runs, only slower) and logged.
    `keep_fp32` keeps the optimized fp32 graph beside an int8/fp16 one (the export checks parity on it).
    `calibration` (batches of model inputs) sets a static int8 profile's activation scales; without it, random
    token ids do, which is right for timing and wrong for answers.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = StudentArch.from_config(model.config)
    raw = export_onnx(model, out_dir / "model.onnx", profile.model.opset)
    fp32 = out_dir / FP32_FILE
    if profile.model.optimize:
        attention, stats = _optimize(raw, fp32, profile, arch)
        raw.unlink()
    else:
        raw.rename(fp32)
        attention, stats = 0, {}
    if attention != arch.layers:
        log.warning("graph for %s is not fully fused: %d attention nodes for %d layers", arch, attention, arch.layers)
    final = out_dir / FILE_FOR_PRECISION[profile.precision]
    if profile.precision is Precision.int8:
        from kdnas_deploy.latency.quantization import quantize_int8, synthetic_batches

        if calibration is None and profile.model.activations == "static":
            calibration = synthetic_batches(model.config.vocab_size,
                                            min(profile.shape.seq_len, model.config.max_position_embeddings))
        quantize_int8(fp32, final, profile, calibration)
    elif profile.precision is Precision.fp16:
        _to_fp16(fp32, final)
    if final != fp32 and not keep_fp32:
        fp32.unlink()
    return ProfileGraph(final, profile.precision, arch.layers, attention, stats)


def graph_signature(path: str | os.PathLike[str]) -> str:
    """A hash of a graph's structure with its weight values left out: nodes (type, domain, attributes), the
    inputs and outputs, and every initializer's name, type and shape. Two graphs with one signature run the same
    kernels on the same shapes, so they time alike whatever their weights; this is what lets a trained model's
    latency be measured on a random-weight graph of its architecture (and what the latency table relies on)."""
    import hashlib

    import onnx

    def tensor(t: onnx.TensorProto) -> str:
        return f"{t.name}:{t.data_type}:{list(t.dims)}"

    def attribute(a: onnx.AttributeProto) -> str:
        if a.type == onnx.AttributeProto.TENSOR:  # a folded constant: its values may be weights
            return f"{a.name}=tensor({tensor(a.t)})"
        if a.type == onnx.AttributeProto.GRAPH:
            return f"{a.name}=graph({body(a.g)})"
        return f"{a.name}={onnx.helper.get_attribute_value(a)!r}"

    def value(v: onnx.ValueInfoProto) -> str:
        return f"{v.name}:{onnx.helper.printable_type(v.type)}"

    def body(g: onnx.GraphProto) -> str:
        parts = [value(v) for v in (*g.input, *g.output)]
        parts += [tensor(t) for t in g.initializer]
        parts += [f"{n.domain}::{n.op_type}({','.join(n.input)})->({','.join(n.output)})"
                  f"[{';'.join(attribute(a) for a in n.attribute)}]" for n in g.node]
        return "\n".join(parts)

    model = onnx.load(str(path), load_external_data=False)
    opsets = ",".join(f"{o.domain}:{o.version}" for o in model.opset_import)
    return hashlib.sha256(f"{opsets}\n{body(model.graph)}".encode()).hexdigest()
