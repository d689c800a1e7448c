"""Building a student of any architecture from a teacher: its config, and weights inherited from the teacher.

Inheritance (`init="inherit"`) maps student layer i to teacher layer `layer_map(...)[i]` (uniform spacing,
last to last: a 3-layer student of a 6-layer teacher takes layers 2, 4 and 6) and slices every weight down
to the student's widths:
- hidden size: the first `hidden` dimensions of every embedding, LayerNorm, dense input and output;
- attention: the first `heads` heads and, within each, the first `hidden / heads` dimensions, when the
  student has no more heads and no wider heads than the teacher; otherwise the first dimensions in order;
- feed-forward: the first `ffn` neurons.
A student wider than its teacher in any dimension gets the teacher's weights where they overlap and random
initialisation elsewhere. When the student's shape equals the teacher's every slice is whole, so the student
is an exact copy (tests hold the code to that).

Which units come first is the teacher's business: `init="ranked"` (see `ranking`) hands this code a copy of the
teacher with its units sorted by importance, so the same slicing keeps the most important ones.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import torch

from kdnas_deploy.distill import Init
from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.space import StudentArch

LAYER_RE = re.compile(r"\.encoder\.layer\.(\d+)\.")


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer (0-based) matched to each student layer: uniform spacing, last to last."""
    return [math.ceil((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def parse_layer_map(text: str, student_layers: int, teacher_layers: int) -> list[int]:
    """A user's layer map, 1-based as people count layers ("2,4,6"), validated and turned 0-based."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise KdnasError(f"--layer-map {text!r}: expected comma-separated teacher layer numbers, e.g. 2,4,6") from None
    if len(values) != student_layers:
        raise KdnasError(f"--layer-map {text!r} names {len(values)} teacher layers; the student has {student_layers}")
    if any(not 1 <= v <= teacher_layers for v in values):
        raise KdnasError(f"--layer-map {text!r}: teacher layers are numbered 1..{teacher_layers}")
    return [v - 1 for v in values]


def student_config(teacher_config: Any, arch: StudentArch) -> Any:
    """The teacher's config (vocabulary, positions, labels, activations) with the student's shape."""
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = arch.layers
    config.hidden_size = arch.hidden
    config.num_attention_heads = arch.heads
    config.intermediate_size = arch.ffn
    for extra in ("_name_or_path", "architectures"):
        if hasattr(config, extra):
            setattr(config, extra, None if extra == "architectures" else "")
    return config


def build_student(
    teacher: Any, arch: StudentArch, init: Init = "inherit", seed: int = 0,
    layers: list[int] | None = None, attn_implementation: str = "sdpa",
) -> Any:
    """A `BertForSequenceClassification` of shape `arch`, randomly initialised or inheriting the teacher's weights."""
    from transformers import BertForSequenceClassification

    if init == "ranked":
        raise KdnasError("build_student inherits from the teacher it is given: rank the teacher first (rank_teacher), "
                         "then build with init='inherit'")
    if init not in ("inherit", "random"):
        raise KdnasError(f"unknown initialisation {init!r}: use inherit or random")
    config = student_config(teacher.config, arch)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    student = BertForSequenceClassification(config)
    if init == "inherit":
        mapping = layers if layers is not None else layer_map(arch.layers, teacher.config.num_hidden_layers)
        inherit_weights(student, teacher, mapping)
    return student


def _attention_index(s: StudentArch, t: StudentArch) -> tuple[torch.Tensor, torch.Tensor]:
    """(student positions, teacher positions) for the attention projection's output dimension."""
    if s.heads <= t.heads and s.head_size <= t.head_size:
        teacher_pos = torch.tensor([h * t.head_size + j for h in range(s.heads) for j in range(s.head_size)])
        return torch.arange(s.hidden), teacher_pos
    n = min(s.hidden, t.hidden)
    return torch.arange(n), torch.arange(n)


def param_dims(name: str) -> tuple[str, ...]:
    """What each dimension of a BERT parameter measures: h(idden), a(ttention), f(fn) or n (same in both)."""
    if "LayerNorm" in name:
        return ("h",)
    if "_embeddings." in name:
        return ("n", "h")
    if ".attention.self." in name:
        return ("a", "h") if name.endswith("weight") else ("a",)
    if ".attention.output.dense." in name:
        return ("h", "a") if name.endswith("weight") else ("h",)
    if ".intermediate.dense." in name:
        return ("f", "h") if name.endswith("weight") else ("f",)
    if ".output.dense." in name:
        return ("h", "f") if name.endswith("weight") else ("h",)
    if "pooler.dense." in name:
        return ("h", "h") if name.endswith("weight") else ("h",)
    if name.startswith("classifier."):
        return ("n", "h") if name.endswith("weight") else ("n",)
    return ()


@torch.no_grad()
def inherit_weights(student: Any, teacher: Any, layers: list[int]) -> None:
    """Copies the teacher's weights into `student` as the module docstring describes."""
    s_arch, t_arch = StudentArch.from_config(student.config), StudentArch.from_config(teacher.config)
    if len(layers) != s_arch.layers or any(not 0 <= t < t_arch.layers for t in layers):
        raise KdnasError(f"layer map {layers} does not fit a {s_arch.layers}-layer student of a {t_arch.layers}-layer teacher")
    attn = _attention_index(s_arch, t_arch)
    teacher_params = dict(teacher.state_dict())
    for name, param in student.state_dict().items():
        t_name = LAYER_RE.sub(lambda m: f".encoder.layer.{layers[int(m.group(1))]}.", name)
        source = teacher_params.get(t_name)
        if source is None or not param.is_floating_point():
            continue
        kinds = param_dims(name)
        if not kinds:
            if source.shape == param.shape:
                param.copy_(source)
            continue
        s_idx, t_idx = [], []
        for axis, kind in enumerate(kinds):
            if kind == "a":
                s_pos, t_pos = attn
            else:
                n = min(param.shape[axis], source.shape[axis])
                s_pos = t_pos = torch.arange(n)
            s_idx.append(s_pos)
            t_idx.append(t_pos)
        param[torch.meshgrid(*s_idx, indexing="ij")] = source[torch.meshgrid(*t_idx, indexing="ij")].to(param.dtype)
