"""khash.hash32_pairs (a 4-tuple's two (address, port) pairs packed as one int each) equals
its definition, hash32 of the five items, in C and in Python, for the ints the model
hashes and for values outside them (negative, 2**64 and more: the generic split)."""

from __future__ import annotations

import random

import pytest

from tcpreuse.model import khash

C = pytest.importorskip("tcpreuse.model._khash")


def _want(secret: int, a: int, b: int, p: int, q: int) -> int:
    return hash((secret, a, b, p, q)) & 0xFFFFFFFF


def test_the_build_uses_the_c_form() -> None:
    assert khash.hash32_pairs is C.hash32_pairs


def test_pairs_equal_the_five_item_hash_on_model_ints() -> None:
    rng = random.Random(7)
    for _ in range(20000):
        secret = rng.choice((rng.getrandbits(64), rng.getrandbits(62), 0, 1, -1, 2**61 - 1))
        a, b = rng.getrandbits(32), rng.getrandbits(32)
        p, q = rng.getrandbits(16), rng.getrandbits(16)
        ap, bq = (a << 16) | p, (b << 16) | q
        want = _want(secret, a, b, p, q)
        assert C.hash32_pairs(secret, ap, bq) == want
        assert khash.hash32_pairs_ref(secret, ap, bq) == want
        assert C.hash32_pairs(secret, ap, bq) == C.hash32(secret, a, b, p, q)


@pytest.mark.parametrize("ap", [0, 0xFFFF, 2**48 - 1, 2**61 - 2, 2**61 - 1, 2**63, 2**64 - 1, 2**64,
                                2**70 + 5, -1, -(2**40), 10**30])
def test_pairs_equal_the_definition_outside_the_model_range(ap: int) -> None:
    for bq in (0, 12345, 2**64 - 1, 2**64, -7):
        assert C.hash32_pairs(99, ap, bq) == khash.hash32_pairs_ref(99, ap, bq)


def test_pairs_raise_like_the_definition() -> None:
    with pytest.raises(TypeError):
        C.hash32_pairs(1, 2)
    with pytest.raises(TypeError):
        C.hash32_pairs([1], 2, 3)
    with pytest.raises(TypeError):
        C.hash32_pairs(1, 2.5, 3)
