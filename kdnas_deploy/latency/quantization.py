"""int8 graphs for the CPU: ONNX Runtime's dynamic quantizer, and its static form with calibrated activation scales.

Dynamic int8 computes each activation's scale from the batch at run time (`DynamicQuantizeLinear`), so a text's
answer depends on what it is batched with. Static int8 fixes every scale from training rows ahead of time.

Why static is the dynamic graph with its scales made constants, not `quantize_static`'s graph: ONNX Runtime's
static quantizers (QDQ and QOperator) have no static form of the fused `Attention` node, which then stays fp32,
measured 1.27x (QOperator) and 1.6x (QDQ) slower than dynamic int8 on MiniLM-L6. The dynamic graph runs every
projection, attention's included, on the integer kernels (`QAttention`, `MatMulInteger`); replacing each
`DynamicQuantizeLinear` by a `QuantizeLinear` whose scale and zero point are ranges ONNX Runtime's own calibrator
recorded keeps those kernels and removes the per-batch scale. See docs/decisions/static-int8.md.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from kdnas_deploy.hardware import HardwareProfile
from kdnas_deploy.util.errors import KdnasError

Feeds = Mapping[str, np.ndarray]
#: The fp32 ops whose float inputs the dynamic quantizer quantizes at run time in a BERT graph: only their tensors are
#: calibrated (the rest of the graph's would be recorded for nothing).
QUANTIZED_OPS = ("MatMul", "Attention", "Gemm")


def quantize_int8(fp32: Path, out: Path, profile: HardwareProfile, calibration: Iterable[Feeds] | None = None) -> None:
    """The profile's int8 graph of `fp32` at `out`: dynamic, or static with scales from `calibration` (the model's
    inputs, one dict of arrays per batch; rows of the training split for an artifact)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    static = profile.model.activations == "static"
    if static and calibration is None:
        raise KdnasError("static int8 needs calibration rows")
    # Symbolic shape inference first: without it the quantizer cannot type the fused nodes' outputs.
    inferred = out.with_suffix(".shapes.onnx")
    quant_pre_process(str(fp32), str(inferred), skip_optimization=True, auto_merge=True)
    try:
        quantize_dynamic(
            inferred, out, weight_type=QuantType.QInt8,
            per_channel=profile.model.per_channel, reduce_range=profile.model.reduce_range,
        )
        if static:
            assert calibration is not None
            fix_activation_scales(out, inferred, calibration)
    finally:
        inferred.unlink(missing_ok=True)


def fix_activation_scales(graph: Path, fp32: Path, calibration: Iterable[Feeds]) -> int:
    """Rewrites the dynamic int8 `graph` in place: every `DynamicQuantizeLinear` becomes a `QuantizeLinear` with the
    uint8 scale and zero point of its input's range over `calibration`, run through `fp32` (the graph it was
    quantized from, whose tensor names it keeps). Returns how many activations were fixed."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    model = onnx.load(str(graph))
    dynamic = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    ranges = calibrated_ranges(fp32, calibration)
    missing = sorted({n.input[0] for n in dynamic} - set(ranges))
    if missing:
        raise KdnasError(f"calibration recorded no range for {len(missing)} quantized activation(s), e.g. {missing[0]}")
    nodes = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        low, high = ranges[node.input[0]]
        # As DynamicQuantizeLinear does per batch: uint8, asymmetric, the range stretched to hold zero exactly.
        zero_point, scale = compute_scale_zp(np.float32(min(low, 0.0)), np.float32(max(high, 0.0)),
                                             np.uint8(0), np.uint8(255), symmetric=False)
        y, y_scale, y_zero_point = node.output
        model.graph.initializer.extend([
            numpy_helper.from_array(np.asarray(scale, dtype=np.float32).reshape(()), y_scale),
            numpy_helper.from_array(np.asarray(zero_point, dtype=np.uint8).reshape(()), y_zero_point),
        ])
        nodes.append(helper.make_node("QuantizeLinear", [node.input[0], y_scale, y_zero_point], [y],
                                      name=f"{node.name}_static"))
    del model.graph.node[:]
    model.graph.node.extend(_integer_matmuls_to_float(nodes, {i.name for i in model.graph.initializer}))
    onnx.save(model, str(graph))
    return len(dynamic)


def _integer_matmuls_to_float(nodes: list[Any], initializers: set[str]) -> list[Any]:
    """Each `MatMulInteger -> Cast -> Mul(Mul(a_scale, b_scale))` chain as one `MatMulIntegerToFloat`.

    ONNX Runtime makes this fusion itself on a dynamic graph (then folds in the quantization as
    `DynamicQuantizeMatMul`), but once the scales are constants its constant folding turns the scale product into
    one initializer first, the pattern no longer matches, and the three unfused ops cost 3-9% of the latency."""
    from onnx import helper

    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop: set[int] = set()
    fused: dict[int, Any] = {}
    for n in nodes:
        if n.op_type != "MatMulInteger" or len(n.input) != 4:
            continue
        cast = consumers.get(n.output[0], [])
        if len(cast) != 1 or cast[0].op_type != "Cast":
            continue
        mul = consumers.get(cast[0].output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul":
            continue
        scales = producer.get(next((i for i in mul[0].input if i != cast[0].output[0]), ""))
        if (scales is None or scales.op_type != "Mul" or not set(scales.input) <= initializers
                or len(consumers.get(scales.output[0], [])) != 1):
            continue
        a, b, a_zero, b_zero = n.input
        quantize = producer.get(a)
        if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[1] not in scales.input:
            continue
        a_scale = quantize.input[1]
        b_scale = next((i for i in scales.input if i != a_scale), a_scale)
        fused[id(n)] = helper.make_node("MatMulIntegerToFloat", [a, b, a_scale, b_scale, a_zero, b_zero],
                                        [mul[0].output[0]], name=f"{n.name}_to_float", domain="com.microsoft")
        drop |= {id(cast[0]), id(mul[0]), id(scales)}
    return [fused.get(id(n), n) for n in nodes if id(n) not in drop]


def calibrated_ranges(fp32: Path, calibration: Iterable[Feeds]) -> dict[str, tuple[float, float]]:
    """(min, max) of the float tensors around `QUANTIZED_OPS` in `fp32` over the calibration batches, by ONNX
    Runtime's min-max calibrator."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self, batches: Iterator[Feeds], inputs: set[str]):
            self.batches, self.inputs = batches, inputs

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            return {k: np.asarray(v, dtype=np.int64) for k, v in batch.items() if k in self.inputs}

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise KdnasError("calibration saw no rows: give at least one training row")
    with tempfile.TemporaryDirectory(prefix="kdnas-calibrate-") as tmp:
        calibrator = create_calibrator(str(fp32), list(QUANTIZED_OPS), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax, extra_options={"symmetric": False})
        reader = Reader(itertools.chain([first], batches), {i.name for i in calibrator.infer_session.get_inputs()})
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
        del calibrator  # its session holds the augmented file open
    ranges = {}
    for name, value in data.items():
        low, high = value.range_value
        ranges[name] = (float(np.min(low)), float(np.max(high)))
    return ranges


def row_batches(rows: Any, limit: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Up to `limit` encoded rows (a seeded random sample of `rows`), one row per batch: no padding, so the ranges
    are those of real tokens only (padded positions are masked out of every answer, and their activations would
    only widen the ranges)."""
    from kdnas_deploy.data.encode import MODEL_INPUTS

    order = np.random.default_rng(seed).permutation(len(rows))[:limit]
    for i in order:
        row = rows[int(i)]
        yield {k: np.asarray(row[k], dtype=np.int64)[None, :] for k in MODEL_INPUTS}


def synthetic_batches(vocab_size: int, seq_len: int, batches: int = 4, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Random token ids: the scales they give are meaningless but a static graph's speed does not depend on them, so
    the latency table times random-weight stand-ins calibrated on these."""
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        ids = rng.integers(vocab_size // 30, vocab_size, size=(1, seq_len), dtype=np.int64)
        yield {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
