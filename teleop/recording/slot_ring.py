"""Fixed-size slots of shared memory, filled by one process and emptied in order by another.

Large payloads (camera images) go from a recording process to its writer process through here,
so only a slot number crosses the pipe. A semaphore counts the free slots: the producer takes one
per payload and the consumer gives it back once it has finished with the slot. Slots are used
round robin and consumed in the order their numbers were sent, so when the producer gets a free
slot, the next one in turn is the one released. The semaphore also orders the memory: a slot's
old reader is done before its new writer starts, on weakly ordered CPUs too.

The memory is a ``multiprocessing`` heap block (an unlinked file in /dev/shm, or the temporary
folder when /dev/shm is too small), so nothing is left behind whoever dies.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from typing import Any

import numpy as np


class SlotRing:
    """``slots`` slots of ``slot_bytes``; hand it to the consumer as a ``Process`` argument."""

    def __init__(self, ctx: SpawnContext, slot_bytes: int, slots: int) -> None:
        if slot_bytes <= 0 or slots <= 0:
            raise ValueError(f"a ring needs positive slot_bytes and slots, got {slot_bytes} and {slots}")
        self.slot_bytes, self.slots = slot_bytes, slots
        self._memory = ctx.RawArray(ctypes.c_uint8, slot_bytes * slots)
        self._free = ctx.Semaphore(slots)
        self._next = 0  # producer side: the slot the next payload goes to
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The memory travels as a handle (at spawn), never as a copy of its bytes.
        return {**self.__dict__, "_array": None}

    def _view(self) -> np.ndarray:
        if self._array is None:
            self._array = np.frombuffer(memoryview(self._memory), np.uint8).reshape(self.slots, self.slot_bytes)
        return self._array

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.slot_bytes

    def put(self, payload: np.ndarray | bytes, waiting: Callable[[float], None]) -> int:
        """Copy ``payload`` into the next slot and return the slot's number.

        While every slot is taken, ``waiting`` gets the seconds waited so far, every 0.1 s; it
        raises to give up.
        """
        flat = _as_bytes(payload)
        if not self.fits(flat.size):
            raise ValueError(f"payload of {flat.size} bytes does not fit a {self.slot_bytes}-byte slot")
        start = time.monotonic()
        while not self._free.acquire(timeout=0.1):
            waiting(time.monotonic() - start)
        slot = self._next
        self._view()[slot, :flat.size] = flat
        self._next = (slot + 1) % self.slots
        return slot

    def get(self, slot: int, nbytes: int) -> np.ndarray:
        """Consumer: a view of the first ``nbytes`` of ``slot``, valid until ``release``."""
        return self._view()[slot, :nbytes]

    def release(self, count: int = 1) -> None:
        """Consumer: the oldest ``count`` slots in use are free again."""
        for _ in range(count):
            self._free.release()


def _as_bytes(payload: np.ndarray | bytes) -> np.ndarray:
    if isinstance(payload, np.ndarray):
        return np.ascontiguousarray(payload).reshape(-1).view(np.uint8)
    return np.frombuffer(payload, np.uint8)
