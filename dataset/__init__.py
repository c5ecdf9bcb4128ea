"""LeRobotDataset v3.0: write it crash-safely, recover it after a crash, validate, summarise, and read it for training."""

from tether.dataset.layout import CONTROL_SOURCES, PHASES, DatasetSpec
from tether.dataset.recover import RecoveryReport, recover
from tether.dataset.validate import info, validate
from tether.dataset.writer import CommitResult, DatasetWriter

__all__ = [
    "CONTROL_SOURCES",
    "PHASES",
    "CommitResult",
    "DatasetSpec",
    "DatasetWriter",
    "RecoveryReport",
    "info",
    "recover",
    "validate",
]
