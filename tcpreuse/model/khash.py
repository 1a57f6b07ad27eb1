"""The model's keyed-hash primitive: Python's hash of a tuple of ints.

The kernel hashes a 4-tuple with a per-boot secret (siphash, md5 in 2.6.32) for ISNs, TS
offsets and port offsets; the model's stand-in is hash((secret, *ints)) (model/clocks.py
says why that serves). `tuple_hash_ref` is its definition and `hash32_ref` its low 32
bits, all that a 32-bit rule uses ((h + m) & MASK32 == ((h & MASK32) + m) & MASK32; the
low bits are a small int, the hash a 64-bit one that compiled code carries as an object).

`tuple_hash`, `hash32` and `hash32_pairs` compute the same values in C (`_khash.c`: CPython's
tuplehash() over the arguments, without building and boxing the tuple, which was the
largest single item of the simulator's per-connection work) when the package was built
with a compiler, else they are the definitions. tests/test_model_khash.py checks the
two against each other. A primitive, not a kernel rule: the rules that use it
(clocks.linux_isn(), ...) read the same either way.
"""

from __future__ import annotations

from collections.abc import Callable


def tuple_hash_ref(*items: int) -> int:
    """hash(items): the definition."""
    return hash(items)


def hash32_ref(*items: int) -> int:
    """hash(items) & 0xFFFFFFFF: the definition (the low 32 bits, all a 32-bit rule uses)."""
    return hash(items) & 0xFFFFFFFF


def hash32_pairs_ref(secret: int, ap: int, bq: int) -> int:
    """hash32(secret, a, b, p, q) for ap = a << 16 | p and bq = b << 16 | q (0 <= p, q < 2**16):
    a 4-tuple's (address, port) pairs packed as one int each, three ints to box for the call
    instead of five. The definition."""
    return hash32_ref(secret, ap >> 16, bq >> 16, ap & 0xFFFF, bq & 0xFFFF)


tuple_hash: Callable[..., int]
hash32: Callable[..., int]
hash32_pairs: Callable[[int, int, int], int]
try:
    from ._khash import hash32, hash32_pairs, tuple_hash
except ImportError:  # no compiler (setup.py): the definitions, slower
    tuple_hash, hash32, hash32_pairs = tuple_hash_ref, hash32_ref, hash32_pairs_ref
