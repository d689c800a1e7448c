"""Reading a teacher's architecture from its config (hub id or local folder), without its weights."""

from __future__ import annotations

from typing import Any

from kdnas_deploy.util.errors import KdnasError, first_line

#: Model types whose encoder is BERT's: students are built as BERT and inherit weights layer by layer.
SUPPORTED_MODEL_TYPES = ("bert",)


def load_teacher_config(teacher: str, what: str = "teacher") -> Any:
    """The transformers config of `teacher`; BERT-architecture models only (BERT, MiniLM, TinyBERT...). `what` names
    the model in errors (the teacher, or the model an export or evaluation was given)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(teacher)
    except (OSError, ValueError) as exc:
        raise KdnasError(f"cannot load the {what} config from {teacher!r}: {first_line(exc)}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise KdnasError(
            f"{what} {teacher!r} is a {config.model_type!r} model; supported: BERT-architecture models "
            "(model_type 'bert': BERT, MiniLM, TinyBERT and the like)"
        )
    return config


def teacher_config_hash(config: Any) -> str:
    """Hash of the teacher's config, without where it was loaded from (`_name_or_path`): a run whose teacher folder
    was moved or restored elsewhere has the same teacher."""
    from kdnas_deploy.util.hashing import stable_hash

    values = config.to_dict()
    values.pop("_name_or_path", None)
    return stable_hash(values)


def located_config_hash(config: Any, path: str) -> str:
    """The hash runs recorded before `teacher_config_hash` left the folder out: with `_name_or_path` set to `path`,
    the teacher as that run named it."""
    from kdnas_deploy.util.hashing import stable_hash

    return stable_hash({**config.to_dict(), "_name_or_path": path})


def is_recorded_teacher(recorded_hash: str | None, config: Any, recorded_path: str) -> bool:
    """`config` is the teacher a run recorded, by its hash of either kind (the one recorded before the folder was
    left out names the teacher by `recorded_path`, the folder the run was given)."""
    return recorded_hash in (teacher_config_hash(config), located_config_hash(config, recorded_path))
