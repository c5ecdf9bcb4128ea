"""One thread count per process, fixed at start-up and only read afterwards.

torch's intra-op and inter-op thread counts may only be set before any parallel work: changing
them after a backward pass aborted torch 2.13 (CPU) in the next backward on an AVX2 machine. So
``tether``'s ``main`` fixes the count once, from ``--threads`` or ``TETHER_THREADS``, before any
torch work; library code (training, export, benchmarks) reads :func:`count` and never sets it.
onnxruntime sessions take the same count as a per-session option, which changes nothing global.

Without ``--threads`` or ``TETHER_THREADS`` torch keeps its own default (the physical cores, or
``OMP_NUM_THREADS``), and that is the count everything reads.
"""

from __future__ import annotations

import os
import sys

from tether.errors import TetherError

ENV = "TETHER_THREADS"

_fixed: int | None = None


def requested(flag: int | None = None) -> int | None:
    """The count asked for: ``flag`` (a ``--threads`` option), else ``TETHER_THREADS``, else None."""
    if flag is not None:
        return _positive(flag, "--threads")
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    try:
        return _positive(int(value), ENV)
    except ValueError:
        raise TetherError(f"{ENV}={value!r} is not a thread count; give a positive integer, e.g. {ENV}=1") from None


def _positive(value: int, where: str) -> int:
    if value < 1:
        raise TetherError(f"{where} {value}: the thread count must be a positive integer (1 leaves a core free)")
    return value


def fix(threads: int | None, *, torch: bool) -> int:
    """Start-up: fix this process's thread count, once; returns it.

    ``threads`` None keeps the libraries' default. ``torch`` True (commands that train, export or
    benchmark) imports torch and sets its intra-op and inter-op counts now, before any torch work.
    A second call may only confirm the count already fixed.
    """
    global _fixed
    if _fixed is not None:
        if threads is not None and threads != _fixed:
            raise TetherError(f"this process's thread count is already fixed at {_fixed}; --threads {threads} "
                              "can only be chosen at start-up (run `tether` as its own process)")
        return _fixed
    if torch:
        _fix_torch(threads)
    _fixed = threads or count()
    return _fixed


def _fix_torch(threads: int | None) -> None:
    already_loaded = "torch" in sys.modules
    import torch

    if threads is None:
        return
    if already_loaded:
        # It may have run parallel work already (a test or a notebook calling main): changing the count
        # now is what crashed torch. Refuse rather than risk it; the same count needs nothing.
        if threads != torch.get_num_threads():
            raise TetherError(f"--threads {threads}: torch already runs in this process with "
                              f"{torch.get_num_threads()} threads, and its thread count can only be set before any "
                              f"torch work; run `tether` as its own process (or set {ENV} before starting Python)")
        return
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        torch.set_num_interop_threads(threads)


def count() -> int:
    """The thread count this process runs with: the one fixed at start-up, else torch's, else the usable cores."""
    if _fixed is not None:
        return _fixed
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    return len(os.sched_getaffinity(0))
