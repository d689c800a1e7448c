"""An exported artifact at run time: tokenizer + ONNX Runtime session configured by the profile it was built for.

`Artifact` is what `predict` and `serve` use, with the session settings the export's own accuracy check uses
(`make_session` for the profile). The check scores length-sorted batches (`onnx_logits`); an int8 graph's
dynamic quantization scales per batch, so rows batched otherwise can score slightly differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdnas_deploy.errors import KdnasError, first_line

CARD_FILE = "kdnas_card.json"
#: An input row: one text, or a (text, text_pair) for pair tasks.
Row = str | tuple[str, str] | list[str]


@dataclass(frozen=True)
class Prediction:
    label: str | None  # None for regression
    score: float  # probability of `label`, or the regression output
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise KdnasError(f"{folder} is not an exported artifact (no {CARD_FILE}); make one with kdnas-deploy export")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise KdnasError(f"{path}: not valid JSON ({first_line(exc)})") from None


def feeds_for(session: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """The batch's arrays for the inputs this graph declares, as int64."""
    return {i.name: np.asarray(batch[i.name], dtype=np.int64) for i in session.get_inputs()}


def onnx_logits(session: Any, dataset: Any, batch_size: int = 64, pad_token_id: int = 0) -> np.ndarray:
    """Logits of an encoded dataset through an ONNX Runtime session, in row order."""
    from kdnas_deploy.distill.trainer import sorted_batches

    out: np.ndarray | None = None
    for idx, batch in sorted_batches(dataset, batch_size, pad_token_id):
        logits = session.run(["logits"], feeds_for(session, {k: v.numpy() for k, v in batch.items()}))[0]
        if out is None:
            out = np.zeros((len(dataset), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Artifact:
    """Loads an exported folder; `predict` takes texts or text pairs and returns labels and scores."""

    def __init__(self, folder: str | Path, *, threads: int | None = None, spinning: bool | None = None):
        from kdnas_deploy.hardware import parse_profile
        from kdnas_deploy.artifact.text_encoder import load_text_encoder
        from kdnas_deploy.latency.timing import make_session

        self.folder = Path(folder)
        self.card = read_card(self.folder)
        model_file = self.folder / self.card["file"]
        if not model_file.is_file():
            raise KdnasError(f"{self.folder}: the card names {self.card['file']}, which is missing")
        profile = parse_profile(self.card["profile"]["definition"], str(self.folder / CARD_FILE))
        runtime: dict[str, Any] = {}
        if threads is not None:
            runtime["intra_op_threads"] = threads
        if spinning is not None:
            runtime["allow_spinning"] = spinning
        if runtime:
            profile = profile.model_copy(update={"runtime": profile.runtime.model_copy(update=runtime)})
        self.profile = profile
        self.session = make_session(model_file, profile)
        self.label_names: list[str] = list(self.card["label_names"])
        self.regression: bool = bool(self.card["regression"])
        self.pair: bool = bool(self.card.get("pair", False))
        self.max_length: int = int(self.card["max_length"])
        self.encoder = load_text_encoder(self.folder, self.max_length)

    def encode(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        return self.encoder(*split_rows(rows, self.pair))

    def logits(self, rows: Sequence[Row]) -> np.ndarray:
        if not rows:
            return np.zeros((0, max(1, len(self.label_names))), dtype=np.float32)
        return self.session.run(["logits"], feeds_for(self.session, self.encode(rows)))[0]

    def predict(self, rows: Sequence[Row]) -> list[Prediction]:
        return self.to_predictions(self.logits(rows))

    def to_predictions(self, logits: np.ndarray) -> list[Prediction]:
        if self.regression:
            return [Prediction(None, float(v), {}) for v in logits.reshape(-1)]
        probs = softmax(logits.astype(np.float64))
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append(Prediction(self.label_names[best], float(row[best]),
                                  {name: float(p) for name, p in zip(self.label_names, row)}))
        return out


def split_rows(rows: Sequence[Row], pair: bool) -> tuple[list[str], list[str] | None]:
    """Texts and, for a pair task, second texts; one-line errors for rows of the wrong shape."""
    firsts: list[str] = []
    seconds: list[str] = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            if pair:
                raise KdnasError(f"input {i}: this model takes text pairs; give [text, text_pair]")
            firsts.append(row)
        elif isinstance(row, (list, tuple)) and len(row) == 2 and all(isinstance(t, str) for t in row):
            if not pair:
                raise KdnasError(f"input {i}: this model takes single texts, not pairs")
            firsts.append(row[0])
            seconds.append(row[1])
        else:
            raise KdnasError(f"input {i}: expected a text or a [text, text_pair] pair of strings")
    return firsts, (seconds if pair else None)
