"""Crash-safe LeRobotDataset v3.0 recording: write, recover after a crash, validate, summarise."""

from tether.teleop.dataset.layout import CONTROL_SOURCES, PHASES, DatasetSpec
from tether.teleop.dataset.recover import RecoveryReport, recover
from tether.teleop.dataset.validate import info, validate
from tether.teleop.dataset.writer import CommitResult, DatasetWriter

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
