"""Every hostile chunk kind is refused by the gate for its own reason; valid ones pass (clamped)."""

from __future__ import annotations

import pytest

from tether.attack import KINDS, REFUSAL, ChunkAttack
from tether.gate import Gate
from tether.safety import ChunkRejected


@pytest.mark.parametrize("kind", sorted(REFUSAL))
def test_each_malformed_kind_is_refused_for_its_reason(so101, kind: str) -> None:
    gate = Gate(so101)
    gate.on_joint_state(so101.joint_names, so101.home, stamp=100.0)
    with pytest.raises(ChunkRejected) as info:
        gate.on_chunk("expert", *ChunkAttack(so101, seed=1).chunk(kind, 100.0), now=100.0)
    assert info.value.reason == REFUSAL[kind]


def test_valid_chunks_are_accepted_even_aiming_beyond_the_limits(so101) -> None:
    gate, attack = Gate(so101), ChunkAttack(so101, seed=2)
    gate.on_joint_state(so101.joint_names, so101.home, stamp=100.0)
    for i in range(50):
        assert gate.on_chunk("expert", *attack.chunk("valid", 100.0 + i * 0.01), now=100.0 + i * 0.01)
    assert gate.counters["clamped_values"] > 0  # some aimed past a joint limit
    with pytest.raises(ValueError, match="kinds: valid, unknown_joint"):
        attack.chunk("gentle", 100.0)
    assert set(KINDS) == {"valid", *REFUSAL}
