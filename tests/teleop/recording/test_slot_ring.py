"""The shared-memory ring: payloads come back intact, in order, and a full ring waits (or gives up)."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from tether.teleop.recording.slot_ring import SlotRing

CTX = multiprocessing.get_context("spawn")


def never(_seconds: float) -> None:
    raise AssertionError("the ring should not be full")


def test_payloads_round_trip_in_round_robin_slots() -> None:
    ring = SlotRing(CTX, slot_bytes=12, slots=2)
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert ring.put(image, never) == 0
    assert ring.put(b"abc", never) == 1
    assert ring.get(0, 12).reshape(2, 2, 3).tolist() == image.tolist()
    assert ring.get(1, 3).tobytes() == b"abc"
    ring.release()
    assert ring.put(b"xyz", never) == 0  # the freed slot comes round again


def test_a_full_ring_waits_until_the_consumer_frees_a_slot() -> None:
    ring = SlotRing(CTX, slot_bytes=4, slots=1)
    ring.put(b"1234", never)
    waited: list[float] = []

    def waiting(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) == 2:
            ring.release()  # the consumer catches up

    assert ring.put(b"5678", waiting) == 0
    assert len(waited) == 2 and waited[1] >= waited[0] > 0


def test_the_waiting_callback_can_give_up() -> None:
    ring = SlotRing(CTX, slot_bytes=4, slots=1)
    ring.put(b"1234", never)

    def give_up(_seconds: float) -> None:
        raise TimeoutError("consumer gone")

    with pytest.raises(TimeoutError):
        ring.put(b"5678", give_up)


def test_a_payload_larger_than_a_slot_is_refused() -> None:
    ring = SlotRing(CTX, slot_bytes=4, slots=2)
    assert not ring.fits(5)
    with pytest.raises(ValueError, match="5 bytes does not fit a 4-byte slot"):
        ring.put(b"12345", never)
