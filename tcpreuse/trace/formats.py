"""Tracepoint format files, parsed: which fields an event has, and the kernel's own
numbering of its enums (``__print_symbolic`` tables in the ``print fmt:`` line).

The numbers of ``enum skb_drop_reason`` (include/net/dropreason-core.h) and
``enum sk_rst_reason`` (include/net/rstreason.h) change between kernels, as new reasons
are inserted in the middle of the enum; the only numbering that is true for the running
kernel is the one its tracefs prints (``events/skb/kfree_skb/format``). Nothing here does
I/O: the texts are read by :mod:`.kernel`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);", re.M)
_SYMBOLIC = re.compile(r"__print_symbolic\(\s*REC->(?P<field>\w+)\s*,")
_PAIR = re.compile(r"\{\s*(?P<num>-?(?:0x[0-9a-fA-F]+|\d+)|\w+)\s*,\s*\"(?P<name>[^\"]*)\"\s*\}")


@dataclass
class EventFormat:
    """One tracepoint: its fields (name -> C type) and its symbolic tables per field."""

    name: str
    fields: dict[str, str] = field(default_factory=dict)
    symbols: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> {NAME: number}
    symbolic_names: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> {token: NAME}

    def has(self, name: str) -> bool:
        return name in self.fields


def _balanced(text: str, start: int) -> str:
    """The text from `start` (just after an opening parenthesis) to its closing one."""
    depth = 1
    i = start
    while i < len(text) and depth:
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == '"':
            j = text.find('"', i + 1)
            i = j if j >= 0 else len(text)
        i += 1
    return text[start:i - 1]


def parse_format(name: str, text: str) -> EventFormat:
    """Parse the text of ``events/<system>/<event>/format``."""
    ev = EventFormat(name=name)
    for m in _FIELD.finditer(text):
        decl = m["decl"].strip()
        # "unsigned char saddr[4]" -> name saddr; "enum skb_drop_reason reason" -> reason
        ident = re.search(r"(\w+)\s*(\[[^\]]*\])?\s*$", decl)
        if ident is None:
            continue
        fname = ident.group(1)
        if fname.startswith("common_"):
            continue
        ev.fields[fname] = decl[: ident.start()].strip() + (ident.group(2) or "")
    fmt = text.split("print fmt:", 1)[1] if "print fmt:" in text else ""
    for m in _SYMBOLIC.finditer(fmt):
        body = _balanced(fmt, m.end())
        table: dict[str, int] = {}
        tokens: dict[str, str] = {}
        for p in _PAIR.finditer(body):
            num, sym = p["num"], p["name"]
            try:
                table[sym] = int(num, 0)
            except ValueError:  # a C name (TCP_ESTABLISHED) the kernel did not expand
                tokens[num] = sym
        if table:
            ev.symbols.setdefault(m["field"], table)
        if tokens:
            ev.symbolic_names.setdefault(m["field"], tokens)
    return ev


def invert(table: dict[str, int]) -> dict[int, str]:
    return {v: k for k, v in table.items()}
