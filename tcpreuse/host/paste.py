"""Pasted command output from a machine without tcpreuse: recognise it, parse it.

Accepted, in any order and mixed in one file (each line is recognised on its own, so
``sysctl -a; netstat -s; ss -tanoe > all.txt`` works):

* Linux: ``sysctl -a``, ``nstat -az``, ``netstat -s``, ``cat /proc/net/netstat``,
  ``ss -tan`` / ``ss -tanoe`` (timers give the TIME_WAIT time left), ``netstat -ant``,
  ``uname -a`` (kernel version);
* Windows: ``netsh int tcp show global``, ``netsh int ipv4 show dynamicport tcp``,
  ``netstat -ano``, ``reg query ...\\Tcpip\\Parameters`` (TcpTimedWaitDelay).

Lines that match nothing are counted and reported (first few quoted); a file in which
nothing matches is an error that says what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HostError
from .observed import CounterSample, Observed, SocketSample
from .sockets import (
    SOCK_DTYPE,
    TCP_CLOSE,
    TCP_CLOSE_WAIT,
    TCP_CLOSING,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT1,
    TCP_FIN_WAIT2,
    TCP_LAST_ACK,
    TCP_LISTEN,
    TCP_SYN_RECV,
    TCP_SYN_SENT,
    TCP_TIME_WAIT,
    TIMER_TIMEWAIT,
    SockTable,
    addr_bytes,
)

MAX_PASTE = 256 << 20

# ---- netstat -s (net-tools statistics.c texts, old and new spellings) ----------------------
_NETSTAT_S: dict[str, list[tuple[str, str]]] = {
    "Tcp": [
        ("ActiveOpens", r"active connections? openings"),
        ("PassiveOpens", r"passive connection openings"),
        ("AttemptFails", r"failed connection attempts"),
        ("EstabResets", r"connection resets received"),
        ("CurrEstab", r"connections established"),
        ("InSegs", r"segments received"),
        ("OutSegs", r"segments sen[dt] out"),
        ("RetransSegs", r"segments retransmit+ed"),
        ("InErrs", r"bad segments received\.?"),
        ("OutRsts", r"resets sent"),
    ],
    "TcpExt": [
        ("TW", r"TCP sockets finished time wait in fast timer"),
        ("TWKilled", r"TCP sockets finished time wait in slow timer"),
        ("TWRecycled", r"time wait sockets recycled by time stamp"),
        ("PAWSPassive", r"passive connections rejected because of time stamp"),
        ("PAWSActive", r"active connections rejected because of time stamp"),
        ("PAWSEstab", r"packete?s? reject(?:s|ed) in established connections because of timestamp"),
        ("ListenOverflows", r"times the listen queue of a socket overflowed"),
        ("ListenDrops", r"SYNs to LISTEN sockets (?:dropped|ignored)"),
        ("SyncookiesSent", r"SYN cookies sent"),
        ("SyncookiesRecv", r"SYN cookies received"),
        ("SyncookiesFailed", r"invalid SYN cookies received"),
        ("EmbryonicRsts", r"resets received for embryonic SYN_RECV sockets"),
        ("TCPAbortOnData", r"connections reset due to unexpected data"),
        ("TCPAbortOnClose", r"connections reset due to early user close"),
        ("TCPAbortOnMemory", r"connections aborted due to memory pressure"),
        ("TCPAbortOnTimeout", r"connections aborted due to timeout"),
        ("TCPAbortOnLinger", r"connections aborted after user close in linger timeout"),
    ],
}
_NETSTAT_S_RE = {
    sec: [(name, re.compile(r"^\s+(\d+) " + pat + r"\s*$")) for name, pat in entries]
    for sec, entries in _NETSTAT_S.items()
}
_NETSTAT_S_SECTION = re.compile(r"^(Ip|Icmp|IcmpMsg|Tcp|Udp|UdpLite|TcpExt|IpExt|MPTcpExt|Sctp|Ip6|Icmp6|Udp6):\s*$")
_NETSTAT_S_KV = re.compile(r"^\s+([A-Za-z][A-Za-z0-9]+): (\d+)\s*$")
_PROC_HDR = re.compile(r"^(Ip|Icmp|IcmpMsg|Tcp|Udp|UdpLite|TcpExt|IpExt|MPTcpExt): ([A-Za-z].*)$")
_PROC_VAL = re.compile(r"^(Ip|Icmp|IcmpMsg|Tcp|Udp|UdpLite|TcpExt|IpExt|MPTcpExt): (-?\d+(?: -?\d+)*)\s*$")

# Every top-level directory of /proc/sys (kernel/sysctl.c and its register_sysctl() callers);
# keys below them may hold interface names, which can contain almost anything but "=" and space.
_SYSCTL = re.compile(r"^\s*((?:abi|crypto|debug|dev|fs|kernel|net|sunrpc|user|vm)\.[^\s=]+)\s*=\s?(.*?)\s*$")
_NSTAT = re.compile(r"^([A-Z][A-Za-z0-9]+)\s+(\d+)\s+\d+(?:\.\d+)?\s*$")
_UNAME = re.compile(r"^Linux\s+(\S+)\s+(\d+\.\d+[\w.\-+]*)\s")
_RELEASE_FILE = re.compile(r"^(CentOS|Red Hat Enterprise Linux\S*|Rocky|AlmaLinux)\b.*release (\d+)", re.I)

_SS_HEADER = re.compile(r"^\s*(?:Netid\s+)?(State\s+)?Recv-Q\s+Send-Q\s+Local Address:Port\s+Peer Address:Port")
_SS_STATES = {
    "ESTAB": TCP_ESTABLISHED, "SYN-SENT": TCP_SYN_SENT, "SYN-RECV": TCP_SYN_RECV,
    "FIN-WAIT-1": TCP_FIN_WAIT1, "FIN-WAIT-2": TCP_FIN_WAIT2, "TIME-WAIT": TCP_TIME_WAIT,
    "UNCONN": TCP_CLOSE, "CLOSE-WAIT": TCP_CLOSE_WAIT, "LAST-ACK": TCP_LAST_ACK,
    "LISTEN": TCP_LISTEN, "CLOSING": TCP_CLOSING, "CLOSED": TCP_CLOSE,
}
_SS_ROW = re.compile(
    r"^\s*(?:(tcp|udp|u_str|u_dgr|u_seq|raw|nl|p_raw|p_dgr|icmp6|mptcp|sctp)\s+)?"
    r"(ESTAB|SYN-SENT|SYN-RECV|FIN-WAIT-1|FIN-WAIT-2|TIME-WAIT|UNCONN|CLOSE-WAIT|LAST-ACK|LISTEN|CLOSING|CLOSED)?\s*"
    r"(\d+)\s+(\d+)\s+(\S+:\S+)\s+(\S+:\S+)(.*)$"
)
_SS_TIMER = re.compile(r"timer:\((\w+),([^,]*),(\d+)\)")
_SS_COOKIE = re.compile(r"\bsk:([0-9a-f]+)\b")
_SS_INO = re.compile(r"\bino:(\d+)\b")
_MS = re.compile(r"^(?:(\d+)min)?(?:(\d+)(sec|\.))?(?:(\d+)(?:ms|sec))?$")

_NETSTAT_STATES = {
    "ESTABLISHED": TCP_ESTABLISHED, "SYN_SENT": TCP_SYN_SENT, "SYN_RECV": TCP_SYN_RECV,
    "SYN_RECEIVED": TCP_SYN_RECV, "FIN_WAIT1": TCP_FIN_WAIT1, "FIN_WAIT_1": TCP_FIN_WAIT1,
    "FIN_WAIT2": TCP_FIN_WAIT2, "FIN_WAIT_2": TCP_FIN_WAIT2, "TIME_WAIT": TCP_TIME_WAIT,
    "CLOSE": TCP_CLOSE, "CLOSED": TCP_CLOSE, "BOUND": TCP_CLOSE, "CLOSE_WAIT": TCP_CLOSE_WAIT,
    "LAST_ACK": TCP_LAST_ACK, "LISTEN": TCP_LISTEN, "LISTENING": TCP_LISTEN, "CLOSING": TCP_CLOSING,
}
_WIN_NETSTAT = re.compile(r"^\s*TCP\s+(\S+)\s+(\S+)\s+([A-Z_12]+)(?:\s+(\d+))?\s*$")
_LINUX_NETSTAT = re.compile(r"^tcp6?\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+([A-Z_12]+)\b")
_WIN_HEADERS = re.compile(r"^\s*(Active Connections|Proto\s+Local Address\s+Foreign Address|Querying active state"
                          r"|TCP Global Parameters|-{5,}|UDP\s|Protocol (?:tcp|udp) Dynamic Port Range)")
_NETSH_KV = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ()/\-]*?)\s*:\s*(\S.*?)\s*$")
_DYNPORT = re.compile(r"Protocol (tcp|udp) Dynamic Port Range", re.I)
_REG = re.compile(r"^\s*(TcpTimedWaitDelay|MaxUserPort)\s+REG_DWORD\s+(0x[0-9a-fA-F]+|\d+)\s*$")

_NETSH_GLOBAL = {
    "rfc 1323 timestamps": "netsh.tcp.timestamps",
    "initial rto": "netsh.tcp.initialrto",
    "max syn retransmissions": "netsh.tcp.maxsynretransmissions",
}


def parse_ms(text: str) -> int | None:
    """ss print_ms_timer() text -> ms: "59sec", "1min", "9.501sec", "476ms" (and the old "9.501ms")."""
    m = _MS.match(text.strip())
    if not m or not any(m.groups()):
        return None
    mins, secs, ms = m[1], m[2], m[4]
    return int(mins or 0) * 60000 + int(secs or 0) * 1000 + int(ms or 0)


def _endpoint(text: str) -> tuple[bytes, int, int]:
    """"10.0.0.1:80", "[::]:22", ":::22", "*:*" -> (16 address bytes, port, family)."""
    host, _, port = text.rpartition(":")
    p = 0 if port in ("*", "") else int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} out of range")
    b = addr_bytes(host or "*")
    v6 = ":" in host.split("%")[0] and (b[4:] != b"\x00" * 12 or b == b"\x00" * 16)
    return b, p, 10 if v6 else 2


@dataclass
class _SockRows:
    state: list[int] = field(default_factory=list)
    family: list[int] = field(default_factory=list)
    src: list[bytes] = field(default_factory=list)
    dst: list[bytes] = field(default_factory=list)
    sport: list[int] = field(default_factory=list)
    dport: list[int] = field(default_factory=list)
    rq: list[int] = field(default_factory=list)
    wq: list[int] = field(default_factory=list)
    expires: list[int] = field(default_factory=list)
    timer: list[int] = field(default_factory=list)
    inode: list[int] = field(default_factory=list)
    cookie: list[int] = field(default_factory=list)
    timers_seen: bool = False
    cookies_seen: int = 0  # rows that carried their socket cookie (ss -e: "sk:...")

    def add(self, state: int, local: str, peer: str, rq: int = 0, wq: int = 0, expires: int = 0,
            timer: int = 0, inode: int = 0, cookie: int | None = None) -> None:
        s, sp, fam = _endpoint(local)
        d, dp, _ = _endpoint(peer)
        self.state.append(state)
        self.family.append(fam)
        self.src.append(s)
        self.dst.append(d)
        self.sport.append(sp)
        self.dport.append(dp)
        self.rq.append(rq)
        self.wq.append(wq)
        self.expires.append(expires)
        self.timer.append(timer)
        self.inode.append(inode)
        self.cookie.append(cookie if cookie is not None else 0)

    def table(self) -> SockTable:
        n = len(self.state)
        rows = np.zeros(n, dtype=SOCK_DTYPE)
        if n:
            rows["family"] = self.family
            rows["state"], rows["sport"], rows["dport"] = self.state, self.sport, self.dport
            rows["src"] = np.array(self.src, dtype="V16")
            rows["dst"] = np.array(self.dst, dtype="V16")
            rows["rqueue"], rows["wqueue"] = self.rq, self.wq
            rows["expires"], rows["timer"], rows["inode"] = self.expires, self.timer, self.inode
            complete = self.cookies_seen == n
            rows["cookie"] = self.cookie if complete else np.arange(1, n + 1)  # stand-ins, unique
            rows["ts"] = -1
        return SockTable(rows, has_timers=self.timers_seen, has_cookies=bool(n) and self.cookies_seen == n)


@dataclass
class Parsed:
    """What one pasted file held."""

    origin: str
    os: str | None = None
    hostname: str | None = None
    kernel_release: str | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    counters_complete: bool = True
    counter_kinds: set[str] = field(default_factory=set)
    sockets: _SockRows | None = None
    socket_kinds: set[str] = field(default_factory=set)
    windows: dict[str, object] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)
    unrecognised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_text(text: str, origin: str) -> Parsed:
    p = Parsed(origin=origin)
    section: str | None = None
    proc_hdr: tuple[str, list[str]] | None = None
    dyn_proto: str | None = None
    ss_has_state = True
    netsh_block = False
    nstat_zero = False
    rows = _SockRows()
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.rstrip("\r\n")
        if not s.strip() or s.lstrip().startswith(("$", "#", "C:\\", "PS ")):
            if s.strip() == "#kernel":
                p.kinds.add("nstat")
            section = None  # netstat -s has no blank lines inside; a new output starts
            continue
        try:
            # /proc/net/netstat pasted verbatim (header line then values line)
            m = _PROC_HDR.match(s)
            if m and not _PROC_VAL.match(s):
                proc_hdr = (m[1], m[2].split())
                continue
            m = _PROC_VAL.match(s)
            if m and proc_hdr and proc_hdr[0] == m[1]:
                vals = m[2].split()
                if len(vals) == len(proc_hdr[1]):
                    p.counters.update({m[1] + n: int(v) for n, v in zip(proc_hdr[1], vals, strict=True)})
                    p.kinds.add("/proc/net counters")
                    p.os = p.os or "linux"
                proc_hdr = None
                continue
            m = _NETSTAT_S_SECTION.match(s)
            if m:
                section = m[1]
                p.kinds.add("netstat -s")
                p.os = p.os or "linux"
                continue
            if section and s.startswith((" ", "\t")):
                if section in _NETSTAT_S_RE:
                    for name, rx in _NETSTAT_S_RE[section]:
                        mm = rx.match(s)
                        if mm:
                            p.counters[section + name] = int(mm[1])
                            p.counter_kinds.add("netstat -s")
                            break
                    else:
                        kv = _NETSTAT_S_KV.match(s)
                        if kv:
                            p.counters[section + kv[1]] = int(kv[2])
                            p.counter_kinds.add("netstat -s")
                continue  # any indented line of a netstat -s section is understood
            section = None
            m = _SYSCTL.match(s)
            if m:
                p.sysctls[m[1]] = m[2]
                p.kinds.add("sysctl -a")
                p.os = p.os or "linux"
                continue
            m = _NSTAT.match(s)
            if m:
                p.counters[m[1]] = int(m[2])
                nstat_zero = nstat_zero or m[2] == "0"
                p.counter_kinds.add("nstat")
                p.kinds.add("nstat")
                continue
            m = _SS_HEADER.match(s)
            if m:
                ss_has_state = bool(m[1])
                p.kinds.add("ss")
                p.os = p.os or "linux"
                continue
            m = _LINUX_NETSTAT.match(s)
            if m and m[5] in _NETSTAT_STATES:
                rows.add(_NETSTAT_STATES[m[5]], m[3], m[4], int(m[1]), int(m[2]))
                p.socket_kinds.add("netstat -ant")
                p.os = p.os or "linux"
                continue
            m = _SS_ROW.match(s)
            if m and (m[1] in (None, "tcp")):
                if m[1] is None and not m[2] and ss_has_state:
                    raise ValueError("no state")
                rest = m[7]
                tm = _SS_TIMER.search(rest)
                expires, timer = 0, 0
                if tm:
                    rows.timers_seen = True
                    timer = TIMER_TIMEWAIT if tm[1] == "timewait" else 1
                    expires = parse_ms(tm[2]) or 0
                state = _SS_STATES[m[2]] if m[2] else (TCP_TIME_WAIT if timer == TIMER_TIMEWAIT else TCP_ESTABLISHED)
                ck = _SS_COOKIE.search(rest)
                ino = _SS_INO.search(rest)
                if ck:
                    rows.cookies_seen += 1
                rows.add(state, m[5], m[6], int(m[3]), int(m[4]), expires, timer,
                         int(ino[1]) if ino else 0, int(ck[1], 16) if ck else None)
                p.socket_kinds.add("ss")
                continue
            if m and m[1] is not None:
                continue  # ss -an rows of other protocols: understood, not TCP
            m = _WIN_NETSTAT.match(s)
            if m and m[3] in _NETSTAT_STATES:
                rows.add(_NETSTAT_STATES[m[3]], m[1], m[2])
                p.socket_kinds.add("netstat -ano")
                p.os = "windows"
                continue
            if re.match(r"^\s*UDP\s", s):
                continue
            m = _DYNPORT.search(s)
            if m:
                dyn_proto = m[1].lower()
                p.kinds.add("netsh dynamicport")
                p.os = "windows"
                continue
            m = _REG.match(s)
            if m:
                v = int(m[2], 16) if m[2].lower().startswith("0x") else int(m[2])
                p.windows[m[1]] = v
                p.kinds.add("reg query")
                p.os = "windows"
                continue
            m = _NETSH_KV.match(s)
            if m:
                key, val = m[1].strip().lower(), m[2].strip()
                if key in _NETSH_GLOBAL:
                    name = _NETSH_GLOBAL[key]
                    p.windows[name] = val.lower() if name == "netsh.tcp.timestamps" else int(val)
                    p.kinds.add("netsh tcp global")
                    p.os = "windows"
                    continue
                if key in ("start port", "number of ports") and dyn_proto == "tcp":
                    name = "netsh.ipv4.dynamicport.tcp.start" if key == "start port" else "netsh.ipv4.dynamicport.tcp.num"
                    p.windows.setdefault(name, int(val))
                    continue
                if dyn_proto is not None or netsh_block:
                    continue  # other netsh lines: understood, not needed
            if _WIN_HEADERS.match(s):
                netsh_block = netsh_block or "Global Parameters" in s or "Querying active" in s
                continue
            m = _UNAME.match(s)
            if m:
                p.hostname, p.kernel_release = m[1], m[2]
                p.kinds.add("uname -a")
                p.os = p.os or "linux"
                continue
            m = _RELEASE_FILE.match(s)
            if m:
                p.notes.append(f"{origin}:{lineno}: {s.strip()}")
                if m[2] == "6" and not p.kernel_release:
                    p.kernel_release = "2.6.32-el6"
                p.kinds.add("release file")
                continue
            if s.strip().startswith("Recv-Q") or s.strip().startswith("Proto "):
                continue
            p.unrecognised.append(f"{lineno}: {s.strip()[:60]}")
        except (ValueError, KeyError) as e:
            p.unrecognised.append(f"{lineno}: {s.strip()[:60]} ({e})")
    if "netstat -s" in p.counter_kinds or ("nstat" in p.counter_kinds and not nstat_zero):
        p.counters_complete = False
    if p.counter_kinds:
        p.kinds |= p.counter_kinds
    if rows.state:
        p.sockets = rows
        p.kinds |= p.socket_kinds
    if "kernel.osrelease" in p.sysctls:
        p.kernel_release = p.kernel_release or p.sysctls["kernel.osrelease"].strip()
    if "kernel.hostname" in p.sysctls:
        p.hostname = p.hostname or p.sysctls["kernel.hostname"].strip()
    return p


def read_paste(path: str | Path) -> Parsed:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PASTE:
            raise HostError(f"{path}: larger than {MAX_PASTE >> 20} MB; not pasted command output")
        data = path.read_bytes()
    except FileNotFoundError:
        raise HostError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise HostError(f"{path} is a directory; pass the files in it") from None
    except PermissionError:
        raise HostError(f"cannot read {path}: permission denied") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")  # Windows PowerShell `>` writes UTF-16
    else:
        text = data.decode("utf-8", errors="replace")
    if "\x00" in text[:4096]:
        raise HostError(f"{path}: binary data, not pasted command output",
                        hint="snapshots are read from .tar.gz files made by `tcpreuse doctor --save`")
    p = parse_text(text, path.name)
    if not p.kinds:
        first = p.unrecognised[0] if p.unrecognised else "(empty file)"
        raise HostError(
            f"{path}: nothing tcpreuse can read (line {first})",
            hint="expected output of sysctl -a, nstat -az, netstat -s, ss -tanoe, netstat -ano, "
                 "netsh int tcp show global, netsh int ipv4 show dynamicport tcp",
        )
    return p


def to_observed(parts: list[Parsed], name: str | None = None) -> Observed:
    """Several pasted files of one host -> one Observed."""
    os_ = next((p.os for p in parts if p.os), "linux")
    obs = Observed(name=name or next((p.hostname for p in parts if p.hostname), None) or parts[0].origin, os=os_)
    counters: dict[str, int] = {}
    complete = True
    tables: list[_SockRows] = []
    for p in parts:
        obs.inputs.append(f"{p.origin} ({', '.join(sorted(p.kinds))})")
        obs.sysctls.update(p.sysctls)
        obs.windows.update(p.windows)
        obs.kernel_release = obs.kernel_release or p.kernel_release
        if p.counters:
            counters.update(p.counters)
            complete = complete and p.counters_complete
        if p.sockets is not None:
            tables.append(p.sockets)
        obs.notes.extend(p.notes)
        if p.unrecognised:
            more = f" (and {len(p.unrecognised) - 3} more)" if len(p.unrecognised) > 3 else ""
            obs.notes.append(f"{p.origin}: {len(p.unrecognised)} line(s) not understood, e.g. line "
                             + "; line ".join(p.unrecognised[:3]) + more)
    obs.sysctls.pop("kernel.osrelease", None)
    obs.sysctls.pop("kernel.hostname", None)
    if counters:
        obs.counters.append(CounterSample(t=0.0, values=counters, complete=complete))
        if not complete:
            obs.notes.append("counters from netstat -s / nstat without -z: a counter not printed is read "
                             "as 0 when this kernel has it")
    if tables:
        merged = _SockRows()
        for t in tables:
            for f in ("state", "family", "src", "dst", "sport", "dport", "rq", "wq", "expires", "timer", "inode", "cookie"):
                getattr(merged, f).extend(getattr(t, f))
            merged.timers_seen |= t.timers_seen
        merged.cookies_seen = tables[0].cookies_seen if len(tables) == 1 else 0
        obs.sockets.append(SocketSample(t=0.0, table=merged.table()))
        if not merged.timers_seen:
            obs.notes.append("socket table without timers (use `ss -tanoe`): TIME_WAIT time left is unknown")
    return obs


def group_by_host(parts: list[Parsed]) -> list[list[Parsed]]:
    """Files of the same host together: by OS, then by host name when one is known."""
    groups: list[list[Parsed]] = []
    keys: list[tuple[str, str | None]] = []
    for p in parts:
        os_ = p.os or "linux"
        k = (os_, p.hostname)
        if k in keys:
            groups[keys.index(k)].append(p)
            continue
        if p.hostname is None:
            same = [i for i, kk in enumerate(keys) if kk[0] == os_]
            if same:
                groups[same[0]].append(p)
                continue
        else:
            anon = [i for i, kk in enumerate(keys) if kk == (os_, None)]
            if anon:
                keys[anon[0]] = k
                groups[anon[0]].append(p)
                continue
        keys.append(k)
        groups.append([p])
    return groups
