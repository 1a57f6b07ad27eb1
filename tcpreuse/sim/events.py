"""The engine's event queue: a binary min-heap of events ordered by (time, sequence).

heapq over (t, seq, kind, obj) tuples compares tuples element by element through the
generic comparison protocol; here an event is a native object and the sift loops compare
two floats (and, on equal times, two ints) in compiled code. Sequence numbers are unique,
so the order events come out in is fully determined by (t, seq), as with heapq.
"""

from __future__ import annotations

from typing import Any


class Event:
    __slots__ = ("kind", "obj", "seq", "t")

    def __init__(self, t: float, seq: int, kind: int, obj: Any) -> None:
        self.t, self.seq, self.kind, self.obj = t, seq, kind, obj


def _before(a: Event, b: Event) -> bool:
    return a.t < b.t or (a.t == b.t and a.seq < b.seq)


class EventHeap:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Event] = []

    def __len__(self) -> int:
        return len(self.items)

    # (the comparisons of _before() are spelled out in push and pop: compiled code does
    # not inline calls, and these loops run about twenty of them per event)
    def push(self, ev: Event) -> None:
        items = self.items
        items.append(ev)
        t, seq = ev.t, ev.seq
        i = len(items) - 1
        while i > 0:
            parent = (i - 1) >> 1
            p = items[parent]
            if not (t < p.t or (t == p.t and seq < p.seq)):  # not _before(ev, p)
                break
            items[i] = p
            i = parent
        items[i] = ev

    def pop(self) -> Event:
        """Remove and return the earliest event (the heap must not be empty)."""
        items = self.items
        last = items.pop()
        n = len(items)
        if n == 0:
            return last
        top = items[0]
        lt, ls = last.t, last.seq
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            ev = items[c]
            if c + 1 < n:
                ev2 = items[c + 1]
                if ev2.t < ev.t or (ev2.t == ev.t and ev2.seq < ev.seq):  # _before(ev2, ev)
                    c += 1
                    ev = ev2
            if not (ev.t < lt or (ev.t == lt and ev.seq < ls)):  # not _before(ev, last)
                break
            items[i] = ev
            i = c
        items[i] = last
        return top


def advance(items: list[Any], head: int) -> int:
    """The head of a list read as a FIFO after taking items[head]: the list is emptied
    when read to the end, and its read part dropped once it is most of a long list."""
    h = head + 1
    if h >= len(items):
        items.clear()
        return 0
    if h >= 4096 and 2 * h >= len(items):
        del items[:h]
        return 0
    return h
