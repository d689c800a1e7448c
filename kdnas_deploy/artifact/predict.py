"""`predict`: rows from the command line or a file, through an artifact, in batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdnas_deploy.artifact.runtime import Artifact, Prediction, Row
from kdnas_deploy.util.errors import KdnasError, first_line

TEXT, PAIR = "text", "text_pair"


def read_rows(path: Path, pair: bool) -> list[Row]:
    """Rows of a .jsonl file (objects with `text` and, for pair tasks, `text_pair`) or a .csv/.tsv with those columns."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise KdnasError(f"--input {path}: " + ("is a directory, not a file" if path.is_dir() else "no such file"))
    if suffix == ".jsonl":
        records: list[dict[str, Any]] = []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise KdnasError(f"--input {path}: not UTF-8 text (byte {exc.start})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise KdnasError(f"--input {path}, line {n}: not JSON ({first_line(exc)})") from None
            if not isinstance(obj, dict):
                raise KdnasError(f"--input {path}, line {n}: expected an object with a {TEXT!r} field")
            records.append(obj)
    elif suffix in (".csv", ".tsv"):
        from kdnas_deploy.data.sources import delimited_rows

        try:
            names, table = delimited_rows(path, suffix[1:])
        except KdnasError as exc:
            raise KdnasError(f"--input {exc}") from None
        records = [dict(zip(names or [], row)) for row in table]
    else:
        raise KdnasError(f"--input {path}: use a .jsonl, .csv or .tsv file")
    rows: list[Row] = []
    for n, rec in enumerate(records, start=1):
        text, second = rec.get(TEXT), rec.get(PAIR)
        if not isinstance(text, str):
            raise KdnasError(f"--input {path}, row {n}: no {TEXT!r} string")
        if not text.strip() or (pair and isinstance(second, str) and not second.strip()):
            raise KdnasError(f"--input {path}, row {n}: empty text, nothing to classify (as `serve` answers it 422)")
        if pair:
            if not isinstance(second, str):
                raise KdnasError(f"--input {path}, row {n}: this model takes pairs; add a {PAIR!r} string")
            rows.append((text, second))
        else:
            rows.append(text)
    if not rows:
        raise KdnasError(f"--input {path}: no rows")
    return rows


def predict_rows(artifact: Artifact, rows: list[Row], batch_size: int = 32) -> list[Prediction]:
    preds: list[Prediction] = []
    for start in range(0, len(rows), batch_size):
        preds += artifact.predict(rows[start:start + batch_size])
    return preds
