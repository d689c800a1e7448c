"""Request lengths: the distribution of token counts a deployment will see, and the padded length a batch of them runs.

A server pads each batch to its longest row (`artifact/text_encoder.py`), so a graph's latency under real traffic is
its latency at the longest row of a batch, not at a fixed 128 tokens: SST-2 sentences are 13 tokens on average with
the MiniLM tokenizer, MNLI pairs 39. A `LengthDistribution` holds a histogram of request lengths (from a task's
tokenized training rows, or a file of observed lengths) and answers the distribution of a batch's padded length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdnas_deploy.util.errors import KdnasError
from kdnas_deploy.util.files import read_text_file

#: Lengths the latency table times for a distribution; the others are interpolated between them (`nodes`).
#: Powers of two: a layer's cost is close to linear in length with a quadratic attention term, so piecewise-linear
#: interpolation between doublings is within a few percent.
NODE_LENGTHS = (8, 16, 32, 64, 128, 256, 512)
#: The shortest length a model input has: [CLS] and [SEP] around one token.
MIN_LENGTH = 3
_LINE = re.compile(r"^\s*(\d+)\s*(?:[,\t ]\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class LengthDistribution:
    """Probabilities of request lengths in tokens (special tokens included), capped at `cap`."""

    lengths: tuple[int, ...]  # ascending, distinct
    probs: tuple[float, ...]  # same order, summing to 1
    source: str  # where it came from, for cards and summaries: "task sst2 train (67349 rows)", "file lengths.txt"
    cap: int

    @classmethod
    def from_counts(cls, counts: Mapping[int, float], source: str, cap: int) -> LengthDistribution:
        if cap < MIN_LENGTH:
            raise KdnasError(f"a length cap of {cap} tokens is too short (at least {MIN_LENGTH})")
        capped: dict[int, float] = {}
        for length, count in counts.items():
            if length < 1 or count < 0 or not math.isfinite(count):
                raise KdnasError(f"{source}: a length of {length} tokens seen {count} times is not a length count")
            key = min(max(int(length), MIN_LENGTH), cap)
            capped[key] = capped.get(key, 0.0) + float(count)
        total = sum(capped.values())
        if total <= 0:
            raise KdnasError(f"{source}: no lengths in it")
        keys = sorted(k for k, v in capped.items() if v > 0)
        return cls(tuple(keys), tuple(capped[k] / total for k in keys), source, cap)

    @classmethod
    def from_lengths(cls, lengths: Iterable[int], source: str, cap: int) -> LengthDistribution:
        values, counts = np.unique(np.asarray(list(lengths), dtype=np.int64), return_counts=True)
        return cls.from_counts({int(v): int(c) for v, c in zip(values, counts)}, source, cap)

    @classmethod
    def from_dataset(cls, dataset: Any, source: str, cap: int) -> LengthDistribution:
        """The lengths of a tokenized split's rows (its `input_ids`, already truncated at the task's max length)."""
        return cls.from_lengths((len(ids) for ids in dataset["input_ids"]), f"{source} ({len(dataset)} rows)", cap)

    @classmethod
    def fixed(cls, length: int) -> LengthDistribution:
        """Every request `length` tokens long: today's fixed-shape behaviour."""
        return cls((length,), (1.0,), f"fixed {length} tokens", length)

    @classmethod
    def read(cls, path: str | Path, cap: int) -> LengthDistribution:
        """A file of request lengths: one integer a line (observed lengths), or `length count` a line (a histogram,
        separated by a space, tab or comma). Blank lines and lines starting with # are skipped; anything else is
        one line of error naming the line."""
        text = read_text_file(path, "--lengths")
        counts: dict[int, float] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _LINE.match(line)
            if m is None:
                raise KdnasError(f"--lengths {path}: line {number} is not a length or 'length count': {line[:60]!r}")
            length, count = int(m.group(1)), int(m.group(2)) if m.group(2) is not None else 1
            if length < 1:
                raise KdnasError(f"--lengths {path}: line {number}: a length must be at least 1 token")
            counts[length] = counts.get(length, 0) + count
        return cls.from_counts(counts, f"file {Path(path).name}", cap)

    # -- what a batch sees --------------------------------------------------------------------------
    @property
    def is_fixed(self) -> bool:
        return len(self.lengths) == 1

    def batch_max(self, batch: int) -> LengthDistribution:
        """The distribution of a batch's padded length: the longest of `batch` requests drawn independently,
        P(max <= L) = F(L) ** batch."""
        if batch <= 1:
            return self
        cdf = np.cumsum(self.probs) ** batch
        probs = np.diff(np.concatenate([[0.0], cdf]))
        return LengthDistribution(self.lengths, tuple(float(p) for p in probs), self.source, self.cap)

    def mean(self) -> float:
        return float(np.dot(self.lengths, self.probs))

    def quantile(self, q: float) -> int:
        """The smallest length with at least `q` of the requests at or below it."""
        cdf = np.cumsum(self.probs)
        return int(self.lengths[min(int(np.searchsorted(cdf, q - 1e-12)), len(self.lengths) - 1)])

    def sample(self, n: int, seed: int = 0) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(x) for x in rng.choice(self.lengths, size=n, p=np.asarray(self.probs) / sum(self.probs))]

    def nodes(self) -> tuple[int, ...]:
        """The lengths to time so that every length of the distribution lies between two of them (or on one): the
        powers of two in NODE_LENGTHS from the largest at or below its shortest length to the smallest at or above
        its longest (capped at `cap`, and the shortest length itself where no power lies below it). The top node is
        the profile's own length whenever the cap is (a request of 66 tokens capped at 128: 128), so a table filled
        for the profile's fixed length already holds that node's rows."""
        lo, hi = self.lengths[0], self.lengths[-1]
        if self.is_fixed:
            return (lo,)
        below = [n for n in NODE_LENGTHS if n <= lo]
        above = [n for n in NODE_LENGTHS if n >= hi]
        top = min(above[0], self.cap) if above else hi
        inner = [n for n in NODE_LENGTHS if lo < n < top]
        return tuple(sorted({below[-1] if below else lo, *inner, top}))

    def describe(self) -> str:
        if self.is_fixed:
            return f"{self.lengths[0]} tokens"
        return (f"{self.source}: mean {self.mean():.1f} tokens, p50 {self.quantile(0.5)}, p90 {self.quantile(0.9)}, "
                f"max {self.lengths[-1]} (capped at {self.cap})")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "cap": self.cap, "mean": round(self.mean(), 3),
                "p50": self.quantile(0.5), "p90": self.quantile(0.9), "p99": self.quantile(0.99),
                "histogram": {str(k): round(p, 6) for k, p in zip(self.lengths, self.probs)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LengthDistribution:
        """The inverse of `to_dict` (a card's or a run's record)."""
        try:
            counts = {int(k): float(v) for k, v in dict(data["histogram"]).items()}
            return cls.from_counts(counts, str(data["source"]), int(data["cap"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise KdnasError(f"a length distribution record is malformed ({exc})") from None


def named_lengths(spec: str | Path | None, train: Any, task: str, cap: int) -> LengthDistribution | None:
    """What a `--lengths` option names: "task" (the task's tokenized training split `train`), "fixed" or None (one
    length: no distribution), or a file of lengths; capped at `cap` (the task's max length). One reading for `search`
    and `export`, so a card's distribution is the one its search optimised for."""
    if spec is None or str(spec) == "fixed":
        return None
    if str(spec) == "task":
        return LengthDistribution.from_dataset(train, f"task {task} train", cap)
    return LengthDistribution.read(spec, cap)


def interpolate(length: float, nodes: tuple[int, ...], values: tuple[float, ...]) -> float:
    """Latency at `length` from latencies at the node lengths: piecewise linear between nodes, held flat beyond the
    end nodes (a distribution's nodes bracket it, so that happens only below the shortest node, where the fixed
    cost dominates)."""
    return float(np.interp(length, nodes, values))
