"""medseg: deep-learning segmentation of medical images on MONAI.

Research use only, not for diagnosis.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
