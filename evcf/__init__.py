"""evcf: a reproducible benchmark pipeline for VAE-based collaborative filtering."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("evcf")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
