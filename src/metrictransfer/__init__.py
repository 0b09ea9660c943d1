"""metrictransfer: deep metric learning with knowledge transfer between embedding models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metrictransfer")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0.0.0+unknown"
