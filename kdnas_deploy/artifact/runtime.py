"""An exported artifact at run time: tokenizer + ONNX Runtime session configured by the profile it was built for.

`Artifact` is what `predict` and `serve` use, with the session settings the export's own accuracy check uses
(`make_session` for the profile). The check scores length-sorted batches (`onnx_logits`); a dynamic int8 graph
scales activations per batch, so rows batched otherwise can score slightly differently (a static one cannot).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kdnas_deploy.util.errors import KdnasError, first_line
from kdnas_deploy.util.files import is_unicode

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
    from kdnas_deploy.util.files import read_text_file

    try:
        card = json.loads(read_text_file(path, "artifact card"))
    except ValueError as exc:
        raise KdnasError(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(card, dict):
        raise KdnasError(f"{path}: not an artifact card (a JSON object), but a {type(card).__name__}")
    return card


class RuntimeCard(BaseModel):
    """The card fields a running artifact depends on, checked before any of them is used (strictly: a card that says
    `"regression": "yes"` is damaged, not a regression model)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = "model"
    file: str = Field(min_length=1)
    profile: dict[str, Any]
    label_names: list[str]
    regression: bool
    pair: bool = False
    max_length: int = Field(ge=2)

    @model_validator(mode="after")
    def _consistent(self) -> RuntimeCard:
        if not isinstance(self.profile.get("definition"), dict):
            raise ValueError("profile.definition: missing (the hardware profile the graph was built for)")
        if not self.regression and len(self.label_names) < 2:
            raise ValueError(f"label_names: a classifier needs two or more label names, got {self.label_names}")
        return self

    def model_path(self, folder: Path) -> Path:
        """The graph file, which must lie inside the folder: a card is data, and data names no file elsewhere."""
        rel = Path(self.file)
        root = folder.resolve()
        if rel.is_absolute() or ".." in rel.parts or root not in (root / rel).resolve().parents:
            raise KdnasError(f"{folder}: the card's file {self.file!r} is not a file inside the artifact folder")
        return root / rel


def check_card(card: dict[str, Any], folder: Path) -> RuntimeCard:
    try:
        checked = RuntimeCard.model_validate(card)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise KdnasError(f"{folder / CARD_FILE}: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}") from None
    positions = _max_positions(folder)
    if positions is not None and checked.max_length > positions:
        raise KdnasError(f"{folder / CARD_FILE}: max_length {checked.max_length} is beyond the model's "
                         f"{positions} position embeddings (config.json)")
    return checked


def load_folder(folder: Path) -> tuple[dict[str, Any], RuntimeCard, Path, Any]:
    """An artifact folder's card (raw and checked), its graph file and the hardware profile it was built for."""
    from kdnas_deploy.hardware import parse_profile

    card = read_card(folder)
    checked = check_card(card, folder)
    model_file = checked.model_path(folder)
    if not model_file.is_file():
        raise KdnasError(f"{folder}: the card names {checked.file}, which is missing")
    return card, checked, model_file, parse_profile(card["profile"]["definition"], str(folder / CARD_FILE))


def artifact_graph(path: str | Path) -> tuple[Path, Any | None]:
    """The ONNX file a path means and the hardware profile it was built for: an artifact folder's graph and its
    card's profile, or a bare .onnx file and None (the caller names the profile)."""
    path = Path(path)
    if path.is_dir():
        _card, _checked, model_file, profile = load_folder(path)
        return model_file, profile
    if not path.is_file():
        raise KdnasError(f"{path}: no such artifact folder or ONNX file")
    if path.suffix != ".onnx":
        raise KdnasError(f"{path}: expected an artifact folder (from kdnas-deploy export) or an .onnx file")
    return path, None


def _max_positions(folder: Path) -> int | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    from kdnas_deploy.util.files import read_text_file

    try:
        value = json.loads(read_text_file(path, "model config")).get("max_position_embeddings")
    except (ValueError, AttributeError):
        raise KdnasError(f"{path}: not a valid model config (JSON object)") from None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def feeds_for(session: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """The batch's arrays for the inputs this graph declares, as int64."""
    return {i.name: np.asarray(batch[i.name], dtype=np.int64) for i in session.get_inputs()}


def onnx_logits(session: Any, dataset: Any, batch_size: int = 64, pad_token_id: int = 0,
                order: np.ndarray | None = None) -> np.ndarray:
    """Logits of an encoded dataset through an ONNX Runtime session, in row order; the rows are batched in length
    order, or in the `order` given (a permutation of row indices: other batch-mates, more padding)."""
    from kdnas_deploy.data.batching import sorted_row_batches

    out: np.ndarray | None = None
    for idx, batch in sorted_row_batches(dataset, batch_size, pad_token_id, order):
        logits = session.run(["logits"], feeds_for(session, batch))[0]
        if out is None:
            out = np.zeros((len(dataset), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cpu_check(card: dict[str, Any]) -> dict[str, Any]:
    """This CPU against the one the card's latency and scores were measured on: `note` is one line when their
    instruction sets differ (ONNX Runtime then runs other kernels: other timings, slightly other int8 scores), None
    when they match. The latency of `export --machine` is the deployment target's, so it is compared with that
    machine; the scores are always the export host's. A GPU profile runs its kernels on the GPU: no note."""
    from kdnas_deploy.instruction_set import cpu_model, from_info, host_instruction_set, mismatch

    here = host_instruction_set()
    scores_info = card.get("fingerprint") if isinstance(card.get("fingerprint"), dict) else None
    latency = card.get("latency") if isinstance(card.get("latency"), dict) else {}
    target = latency.get("predicted_machine_info") if isinstance(latency.get("predicted_machine_info"), dict) else None
    scores_on = from_info(scores_info)
    latency_on = from_info(target) if target is not None else scores_on
    result: dict[str, Any] = {"cpu": cpu_model(), "instruction_set": here.summary, "cpu_features": list(here.features),
                              "card_latency_instruction_set": latency_on.summary if latency_on else None,
                              "card_scores_instruction_set": scores_on.summary if scores_on else None}
    gpu = (scores_info or {}).get("gpu") or (target or {}).get("gpu")
    if gpu:
        notes: list[str] = []
    elif latency_on == scores_on:
        notes = [n for n in (mismatch(scores_on, here, "latency and scores"),) if n]
    else:
        notes = [n for n in (mismatch(latency_on, here, "latency"), mismatch(scores_on, here, "scores")) if n]
    result["matches_card"] = not notes
    result["note"] = "; ".join(notes) or None
    return result


class Artifact:
    """Loads an exported folder; `predict` takes texts or text pairs and returns labels and scores."""

    def __init__(self, folder: str | Path, *, threads: int | None = None, spinning: bool | None = None):
        from kdnas_deploy.artifact.text_encoder import load_text_encoder
        from kdnas_deploy.latency.timing import make_session

        self.folder = Path(folder)
        self.card, checked, model_file, profile = load_folder(self.folder)
        runtime: dict[str, Any] = {}
        if threads is not None:
            runtime["intra_op_threads"] = threads
        if spinning is not None:
            runtime["allow_spinning"] = spinning
        if runtime:
            profile = profile.model_copy(update={"runtime": profile.runtime.model_copy(update=runtime)})
        self.profile = profile
        self.session = make_session(model_file, profile)
        self.name: str = checked.name
        self.label_names: list[str] = checked.label_names
        self.regression: bool = checked.regression
        self.pair: bool = checked.pair
        self.max_length: int = checked.max_length
        self.encoder = load_text_encoder(self.folder, self.max_length)
        #: This CPU against the card's: `predict` and `serve` say `cpu["note"]` in one line when they differ.
        self.cpu = cpu_check(self.card)

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
        texts = [row] if isinstance(row, str) else list(row) if isinstance(row, (list, tuple)) else []
        if not all(is_unicode(t) for t in texts if isinstance(t, str)):  # found here, it fails only its own request
            raise KdnasError(f"input {i}: the text holds a lone surrogate (half of a UTF-16 pair), not Unicode text")
        # An empty text is [CLS] [SEP]: the model would label it anyway. Refused here, so `predict`, the library and
        # `serve` (a 422) agree.
        if any(isinstance(t, str) and not t.strip() for t in texts):
            raise KdnasError(f"input {i}: empty text, nothing to classify")
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

