"""Training strategies, by the name recipes use in ``method:``; each registers itself with
``@register_method("name")`` where it is defined (see :mod:`metrictransfer.registry`)."""

from metrictransfer.methods.base import Method
from metrictransfer.methods.classifier import ClassifierMethod
from metrictransfer.methods.mutual import MutualMethod
from metrictransfer.methods.selfsup import SelfSupervisedMethod
from metrictransfer.methods.source import SourceMethod
from metrictransfer.methods.transfer import TransferMethod
from metrictransfer.registry import METHODS, register_method

__all__ = [
    "METHODS",
    "ClassifierMethod",
    "Method",
    "MutualMethod",
    "SelfSupervisedMethod",
    "SourceMethod",
    "TransferMethod",
    "register_method",
]
