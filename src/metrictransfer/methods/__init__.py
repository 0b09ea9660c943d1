"""Training strategies, by the name recipes use in ``method:``."""

from metrictransfer.methods.base import Method
from metrictransfer.methods.classifier import ClassifierMethod
from metrictransfer.methods.mutual import MutualMethod
from metrictransfer.methods.selfsup import SelfSupervisedMethod
from metrictransfer.methods.source import SourceMethod
from metrictransfer.methods.transfer import TransferMethod

METHODS: dict[str, type[Method]] = {
    "source": SourceMethod,
    "transfer": TransferMethod,
    "selfsup": SelfSupervisedMethod,
    "classifier": ClassifierMethod,
    "mutual": MutualMethod,
}

__all__ = ["METHODS", "ClassifierMethod", "Method", "MutualMethod", "SelfSupervisedMethod", "SourceMethod", "TransferMethod"]
