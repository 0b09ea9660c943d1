"""Training strategies, by the name recipes use in ``method:``."""

from metrictransfer.methods.base import Method
from metrictransfer.methods.source import SourceMethod
from metrictransfer.methods.transfer import TransferMethod

METHODS: dict[str, type[Method]] = {"source": SourceMethod, "transfer": TransferMethod}

__all__ = ["METHODS", "Method", "SourceMethod", "TransferMethod"]
