"""32-bit sequence and timestamp arithmetic, as in include/net/tcp.h.

before()/after() mirror the kernel's `(__s32)(seq1 - seq2) < 0`; s32() is the cast.
"""

from __future__ import annotations

from typing import Final

MASK32: Final = 0xFFFFFFFF


def s32(x: int) -> int:
    """(__s32)x"""
    x &= MASK32
    return x - 0x100000000 if x & 0x80000000 else x


def before(seq1: int, seq2: int) -> bool:
    """mirrors before(), include/net/tcp.h, all versions"""
    return s32(seq1 - seq2) < 0


def after(seq1: int, seq2: int) -> bool:
    """mirrors after(), include/net/tcp.h: before(seq2, seq1)"""
    return s32(seq2 - seq1) < 0
