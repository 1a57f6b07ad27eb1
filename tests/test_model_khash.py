"""The keyed-hash primitive's C form equals its definition (model/khash.py): hash() of
the tuple of its arguments (and its low 32 bits), for the ints the model hashes and for
the edge cases of CPython's int and tuple hashing."""

from __future__ import annotations

import random

import pytest

from tcpreuse.model import khash

C = pytest.importorskip("tcpreuse.model._khash")

EDGES = [0, 1, -1, -2, 2**31 - 1, 2**32 - 1, 2**61 - 2, 2**61 - 1, 2**61, 2**62, 2**63 - 1, 2**63,
         2**64 - 1, 2**64, -(2**63), -(2**64), 10**30, -(10**30)]


def test_the_build_uses_the_c_primitive() -> None:
    assert khash.tuple_hash is C.tuple_hash and khash.hash32 is C.hash32


@pytest.mark.parametrize("n", range(7))
def test_c_equals_the_definition_on_random_ints(n: int) -> None:
    rng = random.Random(n)
    for _ in range(3000):
        items = [rng.choice((rng.getrandbits(64), rng.getrandbits(32), rng.getrandbits(16),
                             rng.randrange(-2**70, 2**70), rng.choice(EDGES))) for _ in range(n)]
        assert C.tuple_hash(*items) == khash.tuple_hash_ref(*items) == hash(tuple(items))
        assert C.hash32(*items) == khash.hash32_ref(*items) == hash(tuple(items)) & 0xFFFFFFFF


def test_c_equals_the_definition_on_edges() -> None:
    for a in EDGES:
        for b in EDGES:
            assert C.tuple_hash(a, b) == hash((a, b))
            assert C.tuple_hash(a, b, a, b, a) == hash((a, b, a, b, a))
            assert C.hash32(a, b, a, b, a) == hash((a, b, a, b, a)) & 0xFFFFFFFF
    assert C.tuple_hash() == hash(())
    assert C.hash32() == hash(()) & 0xFFFFFFFF


def test_an_unhashable_item_raises_like_hash() -> None:
    with pytest.raises(TypeError):
        C.tuple_hash(1, [2])
    with pytest.raises(TypeError):
        C.hash32([1])
