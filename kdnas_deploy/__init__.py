"""kdnas-deploy: KD-guided neural architecture search that ships students tuned to your hardware."""

__version__ = "0.1.0"

from kdnas_deploy.util.errors import KdnasError  # noqa: E402
from kdnas_deploy.space import SearchSpace, StudentArch  # noqa: E402

__all__ = ["KdnasError", "SearchSpace", "StudentArch", "__version__"]
