"""Student architectures and the search space they are drawn from.

An architecture is four integers (layers, hidden, heads, FFN size) with a compact string form,
`L4-H256-A4-I1024`, used on the command line, in files and as latency-table keys. A search space
lists the allowed values per dimension; invalid combinations (hidden not divisible by heads, heads
narrower than the floor) are excluded when blocks are built, never sampled and filtered afterwards.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdnas_deploy.util.errors import KdnasError

_ARCH_RE = re.compile(r"^L(\d+)-H(\d+)-A(\d+)-I(\d+)$", re.IGNORECASE)

#: BERT's embedding geometry; latency graphs use it because an embedding gather costs the same
#: whatever the vocabulary size (only the file grows), so timings carry across BERT-family vocabularies.
BERT_VOCAB_SIZE = 30522
BERT_MAX_POSITIONS = 512
BERT_TYPE_VOCAB = 2


@dataclass(frozen=True, order=True)
class StudentArch:
    """One encoder shape. `layers` may be 0 only for the embeddings-plus-head latency block."""

    layers: int
    hidden: int
    heads: int
    ffn: int

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise KdnasError(f"invalid architecture {self}: {problems[0]}")

    def problems(self) -> list[str]:
        out = []
        if self.layers < 0:
            out.append("layers must be >= 0")
        if self.hidden < 1 or self.heads < 1 or self.ffn < 1:
            out.append("hidden, heads and FFN size must be positive")
        elif self.hidden % self.heads:
            out.append(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        return out

    @classmethod
    def parse(cls, text: str) -> StudentArch:
        match = _ARCH_RE.match(text.strip())
        if not match:
            raise KdnasError(
                f"cannot read architecture {text!r}: expected L{{layers}}-H{{hidden}}-A{{heads}}-I{{ffn}}, "
                "for example L4-H256-A4-I1024"
            )
        arch = cls(*(int(g) for g in match.groups()))
        if arch.layers < 1:
            raise KdnasError(f"invalid architecture {text!r}: a student needs at least one layer")
        return arch

    @classmethod
    def from_config(cls, config: Any) -> StudentArch:
        """The architecture of a transformers BERT-family config (a teacher's, say)."""
        return cls(
            int(config.num_hidden_layers),
            int(config.hidden_size),
            int(config.num_attention_heads),
            int(config.intermediate_size),
        )

    def __str__(self) -> str:
        return f"L{self.layers}-H{self.hidden}-A{self.heads}-I{self.ffn}"

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads

    @property
    def block(self) -> tuple[int, int, int]:
        """The shape of one encoder layer: what per-layer latency depends on."""
        return (self.hidden, self.heads, self.ffn)

    def with_layers(self, layers: int) -> StudentArch:
        return StudentArch(layers, self.hidden, self.heads, self.ffn)

    def parameter_count(
        self,
        vocab_size: int = BERT_VOCAB_SIZE,
        max_positions: int = BERT_MAX_POSITIONS,
        type_vocab: int = BERT_TYPE_VOCAB,
        num_labels: int = 2,
    ) -> int:
        """Parameters of a BertForSequenceClassification of this shape (exact, checked in tests)."""
        h, i = self.hidden, self.ffn
        embeddings = (vocab_size + max_positions + type_vocab) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
        pooler = h * h + h
        head = h * num_labels + num_labels
        return embeddings + self.layers * layer + pooler + head


def _as_tuple(values: Any, name: str) -> tuple[int, ...]:
    if isinstance(values, (int, float)):
        values = [values]
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise KdnasError(f"search space: {name} must be a non-empty list of numbers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise KdnasError(f"search space: {name} holds {v!r}; values must be positive numbers")
        out.append(v)
    return tuple(sorted(set(out)))


#: FFN sizes of a space derived from a teacher, as multiples of the width: 0.5x to 4x in quarter steps.
FFN_RATIOS = tuple(0.5 + 0.25 * k for k in range(15))


@dataclass(frozen=True)
class SearchSpace:
    """Allowed values per dimension. FFN sizes are multiples of the hidden size (`ffn_ratios`).

    `min_head_size` is the floor on hidden/heads: below it attention heads are too narrow to learn
    much, and such shapes would only add latency-table entries no search would pick.
    """

    layers: tuple[int, ...]
    hidden: tuple[int, ...]
    heads: tuple[int, ...]
    ffn_ratios: tuple[float, ...]
    min_head_size: int = 16
    name: str = "custom"
    _blocks: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for dim in ("layers", "hidden", "heads"):
            vals = getattr(self, dim)
            if any(int(v) != v for v in vals):
                raise KdnasError(f"search space: {dim} must be whole numbers, got {list(vals)}")
            object.__setattr__(self, dim, tuple(sorted({int(v) for v in vals})))
        object.__setattr__(self, "ffn_ratios", tuple(sorted({float(r) for r in self.ffn_ratios})))
        if min(self.layers) < 1:
            raise KdnasError("search space: layers must be >= 1")
        blocks = []
        for h in self.hidden:
            for a in self.heads:
                if h % a or h // a < self.min_head_size:
                    continue
                for r in self.ffn_ratios:
                    blocks.append((h, a, self.ffn_size(h, r)))
        if not blocks:
            raise KdnasError(
                "search space is empty: no hidden size is divisible by any head count with head size "
                f">= {self.min_head_size}"
            )
        object.__setattr__(self, "_blocks", tuple(sorted(set(blocks))))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> SearchSpace:
        known = {"layers", "hidden", "heads", "ffn_ratios", "min_head_size", "name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KdnasError(f"search space: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        missing = [k for k in ("layers", "hidden", "heads", "ffn_ratios") if k not in data]
        if missing:
            raise KdnasError(f"search space: missing key {missing[0]!r}")
        min_head = data.get("min_head_size", 16)
        if isinstance(min_head, bool) or not isinstance(min_head, int) or min_head < 1:
            raise KdnasError("search space: min_head_size must be a positive integer")
        return cls(
            layers=_as_tuple(data["layers"], "layers"),
            hidden=_as_tuple(data["hidden"], "hidden"),
            heads=_as_tuple(data["heads"], "heads"),
            ffn_ratios=_as_tuple(data["ffn_ratios"], "ffn_ratios"),
            min_head_size=min_head,
            name=str(data.get("name", name)),
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> SearchSpace:
        from kdnas_deploy.util.files import read_toml

        path = Path(path)
        data = read_toml(path, "search space file")
        table = data.get("space", data)
        if not isinstance(table, Mapping):
            raise KdnasError(f"search space file {path}: [space] must be a table of layers, hidden, heads and ffn_ratios, "
                             f"not {type(table).__name__}")
        return cls.from_dict(table, name=path.stem)

    @classmethod
    def from_teacher(
        cls,
        layers: int,
        hidden: int,
        heads: int,
        *,
        min_head_size: int = 16,
        name: str | None = None,
    ) -> SearchSpace:
        """A space under a teacher: 1..its layers, widths at fixed fractions of its width.

        Widths at 1/6 .. 1 of the teacher's (multiples of 32) give a ladder that is dense where
        small students live; heads are the usual powers of two plus 6 and 12 up to the teacher's
        count; FFN sizes are 0.5-4x the width in steps of 0.25x (BERT uses 4x, compact students often less):
        96 at the 384-wide MiniLM, 64 at width 256. Steps of 1x left few shapes between 3 and 4 layers of full
        width, so the smallest budgets had one candidate each and their picks used 55-69% of the latency they
        were given. The finer grid costs no profiling: the layer fit interpolates FFN sizes between the timed
        corners of each width (`latency.profiler.designed_blocks`).
        """
        widths = {hidden}
        for frac in (1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3):
            w = int(round(hidden * frac / 32)) * 32
            if w >= 64:
                widths.add(w)
        head_opts = {a for a in (2, 4, 6, 8, 12, 16) if a <= max(heads, 2)} | {heads}
        return cls(
            layers=tuple(range(1, layers + 1)),
            hidden=tuple(sorted(widths)),
            heads=tuple(sorted(head_opts)),
            ffn_ratios=FFN_RATIOS,
            min_head_size=min_head_size,
            name=name or f"teacher-L{layers}-H{hidden}-A{heads}",
        )

    @classmethod
    def from_teacher_config(cls, config: Any) -> SearchSpace:
        arch = StudentArch.from_config(config)
        return cls.from_teacher(arch.layers, arch.hidden, arch.heads, name=f"auto-{arch}")

    @classmethod
    def resolve(cls, spec: str | Path, teacher_config: Any = None) -> SearchSpace:
        """The CLI's `--space auto|FILE`: auto derives from the teacher, else the default space."""
        if str(spec) != "auto":
            return cls.from_toml(spec)
        return cls.from_teacher_config(teacher_config) if teacher_config is not None else cls.default()

    @classmethod
    def default(cls) -> SearchSpace:
        """The space under a BERT-base teacher (12 layers, 768 wide, 12 heads)."""
        return cls.from_teacher(12, 768, 12, name="bert-base")

    @staticmethod
    def ffn_size(hidden: int, ratio: float) -> int:
        """The FFN size a ratio means for `hidden`: a whole number, as StudentArch's text form needs."""
        return int(round(hidden * ratio))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": list(self.layers),
            "hidden": list(self.hidden),
            "heads": list(self.heads),
            "ffn_ratios": list(self.ffn_ratios),
            "min_head_size": self.min_head_size,
        }

    # -- membership ---------------------------------------------------------------------------
    def blocks(self) -> tuple[tuple[int, int, int], ...]:
        """Every valid (hidden, heads, ffn) layer shape; per-layer latency is measured for each."""
        return self._blocks

    def why_not(self, arch: StudentArch) -> str | None:
        """None when `arch` is in the space, else the reason in words."""
        if arch.layers not in self.layers:
            return f"{arch.layers} layers is not among {list(self.layers)}"
        if arch.hidden not in self.hidden:
            return f"hidden size {arch.hidden} is not among {list(self.hidden)}"
        if arch.heads not in self.heads:
            return f"{arch.heads} heads is not among {list(self.heads)}"
        if arch.head_size < self.min_head_size:
            return f"head size {arch.head_size} is below the floor of {self.min_head_size}"
        if arch.block not in self._blocks:
            ratios = ", ".join(f"{r:g}" for r in self.ffn_ratios)
            return f"FFN size {arch.ffn} is not {ratios} x hidden {arch.hidden}"
        return None

    def __contains__(self, arch: object) -> bool:
        return isinstance(arch, StudentArch) and self.why_not(arch) is None

    def check(self, arch: StudentArch) -> StudentArch:
        reason = self.why_not(arch)
        if reason:
            raise KdnasError(f"architecture {arch} is outside search space {self.name!r}: {reason}")
        return arch

    # -- enumeration and sampling ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers) * len(self._blocks)

    def __iter__(self) -> Iterator[StudentArch]:
        for layers, (h, a, i) in itertools.product(self.layers, self._blocks):
            yield StudentArch(layers, h, a, i)

    def enumerate(self) -> list[StudentArch]:
        return list(self)

    def sample(self, n: int, rng: np.random.Generator | int | None = None, *, unique: bool = True) -> list[StudentArch]:
        """`n` architectures drawn uniformly from the space (without repeats when `unique`)."""
        rng = np.random.default_rng(rng)
        size = len(self)
        if unique:
            n = min(n, size)
            idx = rng.choice(size, size=n, replace=False)
        else:
            idx = rng.integers(0, size, size=n)
        return [self._at(int(k)) for k in idx]

    def _at(self, index: int) -> StudentArch:
        layers = self.layers[index // len(self._blocks)]
        h, a, i = self._blocks[index % len(self._blocks)]
        return StudentArch(layers, h, a, i)

    # -- encoding -------------------------------------------------------------------------------
    feature_names = ("layers", "log_hidden", "log_heads", "ffn_ratio", "log_params")

    def encode(self, arch: StudentArch | Sequence[StudentArch]) -> np.ndarray:
        """Features in [0, 1] per dimension (log scale for widths), for learned predictors.

        Architectures outside the space encode too (values fall outside [0, 1]), so a hand-crafted
        baseline can be scored by the same predictor.
        """
        archs = [arch] if isinstance(arch, StudentArch) else list(arch)
        lo_p = math.log(StudentArch(min(self.layers), *min(self._blocks)).parameter_count())
        hi_arch = max(self._blocks, key=lambda b: StudentArch(1, *b).parameter_count())
        hi_p = math.log(StudentArch(max(self.layers), *hi_arch).parameter_count())

        def scale(v: float, lo: float, hi: float) -> float:
            return 0.5 if hi == lo else (v - lo) / (hi - lo)

        ratios = [i / h for h, _, i in self._blocks]
        rows = [
            [
                scale(a.layers, min(self.layers), max(self.layers)),
                scale(math.log(a.hidden), math.log(min(self.hidden)), math.log(max(self.hidden))),
                scale(math.log(a.heads), math.log(min(self.heads)), math.log(max(self.heads))),
                scale(a.ffn / a.hidden, min(ratios), max(ratios)),
                scale(math.log(a.parameter_count()), lo_p, hi_p),
            ]
            for a in archs
        ]
        out = np.asarray(rows, dtype=np.float64)
        return out[0] if isinstance(arch, StudentArch) else out


#: Shapes a user recognises, shown in `profile` summaries: BERT-base itself, MiniLM-L6, TinyBERT-4.
REFERENCE_ARCHS = (
    StudentArch(12, 768, 12, 3072),
    StudentArch(6, 384, 12, 1536),
    StudentArch(4, 312, 12, 1200),
)
