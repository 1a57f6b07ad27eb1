"""bpftrace's JSON lines, read into :class:`TraceEvent` s and classified. Pure (sans-I/O):
feed it lines, get events; the subprocess that produces them is in :mod:`.runner`.

Each event carries a verdict (:data:`tcpreuse.model.verdicts.VERDICTS`), the kernel's own
reason name (as this kernel numbers it), the 4-tuple oriented as the packet or socket
had it, the socket state it met, the namespace inode, and the process where the kernel
knows it (connect()/bind() run in the caller; receive-path events do not).
"""

from __future__ import annotations

import errno as errno_mod
import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

from ..model.verdicts import ACK, FIN, PSH, RST, SYN, drop_verdict
from .kernel import KernelInfo


@dataclass
class TraceEvent:
    t_ns: int  # CLOCK_MONOTONIC, ns
    probe: str  # the tracepoint
    verdict: str
    reason: str  # the kernel's name for why (drop reason, RST reason, errno name)
    saddr: str
    sport: int
    daddr: str
    dport: int
    state: str = ""  # socket state the packet met / the socket was in
    flags: str = ""  # TCP flags of the packet (S, A, R, F, P)
    netns: int = 0
    pid: int | None = None
    comm: str = ""
    seq: int | None = None

    @property
    def tuple(self) -> tuple[str, int, str, int]:
        return (self.saddr, self.sport, self.daddr, self.dport)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


@dataclass
class Control:
    """A line that is not an event: start, lost events, an error from bpftrace."""

    kind: str  # ready | lost | error | attached
    value: int = 0
    text: str = ""


def _ntohs(v: int) -> int:
    return int(struct.unpack(">H", struct.pack("=H", v & 0xFFFF))[0])


def _ntohl(v: int) -> int:
    return int(struct.unpack(">I", struct.pack("=I", v & 0xFFFFFFFF))[0])


def flag_text(flags: int) -> str:
    return "".join(c for bit, c in ((SYN, "S"), (ACK, "A"), (RST, "R"), (FIN, "F"), (PSH, "P")) if flags & bit)


def _addr(text: str) -> str:
    """An address as printed by bpftrace's ntop(), with IPv4-mapped IPv6 folded to IPv4 (a
    dual-stack socket's view of an IPv4 peer is the same 4-tuple as the packet's)."""
    return text[7:] if text.startswith("::ffff:") and "." in text else text


def _errno_name(ret: int) -> str:
    return errno_mod.errorcode.get(abs(ret), str(abs(ret)))


class Decoder:
    """Turns bpftrace ``-f json`` lines into events, with this kernel's names."""

    def __init__(self, info: KernelInfo) -> None:
        self.drop = info.drop_names
        self.rst = info.rst_names
        self.states = {n: name.removeprefix("TCP_") for n, name in info.state_names.items()}
        self.tw = info.states.get("TCP_TIME_WAIT", 6)

    def state(self, n: int) -> str:
        return self.states.get(n, str(n)) if n else ""

    def line(self, raw: str | bytes) -> TraceEvent | Control | None:
        try:
            doc = json.loads(raw)
        except ValueError:
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            return Control("error", text=text.strip()) if text.strip() else None
        kind = doc.get("type")
        data = doc.get("data")
        if kind == "printf" and isinstance(data, str):
            return self.record(data)
        if kind == "lost_events":
            return Control("lost", value=int((data or {}).get("events", 0)))
        if kind == "attached_probes":
            return Control("attached", value=int((data or {}).get("probes", 0)))
        return None

    def record(self, text: str) -> TraceEvent | Control | None:
        tag, _, rest = text.strip().partition(" ")
        if tag == "READY":
            return Control("ready", value=int(rest))
        if tag in ("C", "B"):
            f = rest.split(" ", 6)
            t, ret, pid, ns, addr, port = int(f[0]), int(f[1]), int(f[2]), int(f[3]), _addr(f[4]), int(f[5])
            comm = f[6] if len(f) > 6 else ""
            port = _ntohs(port)
            name = _errno_name(ret)
            if tag == "C":
                return TraceEvent(t, "syscalls:sys_exit_connect", "connect-error", name, "", 0, addr, port,
                                  netns=ns, pid=pid, comm=comm)
            return TraceEvent(t, "syscalls:sys_exit_bind", "bind-error", name, addr, port, "", 0,
                              netns=ns, pid=pid, comm=comm)
        f = rest.split()
        if tag == "D":
            t, reason, sa, da, sp, dp, fl, st, ns, seq = (int(f[0]), int(f[1]), _addr(f[2]), _addr(f[3]), int(f[4]),
                                                          int(f[5]),
                                                          int(f[6]), int(f[7]), int(f[8]), int(f[9]))
            rname = self.drop.get(reason, str(reason))
            return TraceEvent(t, "skb:kfree_skb", drop_verdict(rname, st == self.tw, fl), rname, sa, _ntohs(sp),
                              da, _ntohs(dp), self.state(st), flag_text(fl), ns, seq=_ntohl(seq))
        if tag == "R":
            t, reason, st, sa, sp, da, dp, ns = (int(f[0]), int(f[1]), int(f[2]), _addr(f[3]), int(f[4]),
                                                 _addr(f[5]), int(f[6]), int(f[7]))
            return TraceEvent(t, "tcp:tcp_send_reset", "reset-sent", self.rst.get(reason, str(reason)), sa,
                              _ntohs(sp), da, _ntohs(dp), self.state(st), netns=ns)
        if tag == "S":
            t, sa, sp, da, dp, ns = int(f[0]), _addr(f[1]), int(f[2]), _addr(f[3]), int(f[4]), int(f[5])
            return TraceEvent(t, "tcp:tcp_retransmit_synack", "synack-retransmit", "", sa, sp, da, dp,
                              "SYN_RECV", netns=ns)
        if tag == "E":
            t, err, sa, sp, da, dp, ns = (int(f[0]), int(f[1]), _addr(f[2]), int(f[3]), _addr(f[4]), int(f[5]),
                                          int(f[6]))
            return TraceEvent(t, "sock:inet_sk_error_report", "async-error", _errno_name(err), sa, sp, da, dp,
                              netns=ns)
        if tag == "T":
            t, old, new, sa, sp, da, dp, ns = (int(f[0]), int(f[1]), int(f[2]), _addr(f[3]), int(f[4]),
                                               _addr(f[5]), int(f[6]), int(f[7]))
            return TraceEvent(t, "sock:inet_sock_set_state", "state", f"{self.state(old)}->{self.state(new)}",
                              sa, sp, da, dp, self.state(new), netns=ns)
        return None
