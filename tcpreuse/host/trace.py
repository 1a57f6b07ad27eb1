"""connect() attempts and failures, traced (opt-in, root): what no counter counts.

A connect() that finds no free port fails with EADDRNOTAVAIL inside inet_hash_connect(),
before tcp_connect() counts TcpActiveOpens, and no other counter moves. But
tcp_v4_connect()/tcp_v6_connect() set the socket to SYN_SENT just before choosing the
port and back to CLOSE when that fails, and tcp_set_state() fires the tracepoint
`sock:inet_sock_set_state` for both. So over the sampling interval:

* attempts per (source, destination, port) = CLOSE -> SYN_SENT transitions;
* failures without a port = SYN_SENT -> CLOSE with source port 0 (EADDRNOTAVAIL).

The events come from a private tracefs instance (its own buffer and filter, removed
afterwards), never the global trace. The tracepoint carries no network namespace: with
--netns, connections of other namespaces to the same destination are counted too.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
EVENT = "events/sock/inet_sock_set_state"
# include/net/tcp_states.h: TCP_SYN_SENT 2, TCP_CLOSE 7; IPPROTO_TCP 6
FILTER = "protocol == 6 && ((oldstate == 7 && newstate == 2) || (oldstate == 2 && newstate == 7))"
BUFFER_KB = 8192
TRACE_KEY = "/cmd/connect-trace.txt"  # raw-sample key of the trace text

_LINE = re.compile(r"inet_sock_set_state: family=(AF_INET6?) protocol=IPPROTO_TCP sport=(\d+) dport=(\d+) "
                   r"saddr=(\S+) daddr=(\S+) saddrv6=(\S+) daddrv6=(\S+) oldstate=(\w+) newstate=(\w+)")


class TraceError(OSError):
    pass


class ConnectTrace:
    """A tracefs instance recording connect()'s SYN_SENT transitions while open."""

    def __init__(self) -> None:
        root = next((r for r in TRACEFS if os.path.isdir(os.path.join(r, "instances"))), None)
        if root is None:
            raise TraceError("tracefs is not mounted (/sys/kernel/tracing)")
        self.dir = os.path.join(root, "instances", f"tcpr-doctor-{os.getpid()}")

    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self.dir, rel), "w") as f:
            f.write(text)

    def start(self) -> None:
        try:
            os.mkdir(self.dir)
        except FileExistsError:
            pass
        except OSError as e:
            raise TraceError(e.errno, f"cannot create a tracefs instance: {e.strerror}") from None
        try:
            self._write("buffer_size_kb", str(BUFFER_KB))
            self._write(f"{EVENT}/filter", FILTER)
            self._write(f"{EVENT}/enable", "1")
        except OSError as e:
            self.stop()
            raise TraceError(e.errno, f"cannot enable sock:inet_sock_set_state: {e.strerror}") from None

    def stop(self) -> str:
        """Disable, read what was recorded (plus lost-event counts), remove the instance."""
        text = ""
        try:
            self._write(f"{EVENT}/enable", "0")
            with open(os.path.join(self.dir, "trace")) as f:
                text = f.read()
            lost = 0
            cpus = os.path.join(self.dir, "per_cpu")
            for cpu in os.listdir(cpus) if os.path.isdir(cpus) else []:
                with open(os.path.join(cpus, cpu, "stats")) as f:
                    m = re.search(r"^overrun: (\d+)", f.read(), re.M)
                    lost += int(m[1]) if m else 0
            text += f"# lost {lost}\n"
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(self.dir)
        return text


@dataclass
class ConnectCounts:
    attempts: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    no_port: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    lost: int = 0
    window_s: float | None = None  # from the trace's start to its end


def parse_trace(text: str) -> ConnectCounts:
    """Counts per (source address, destination address, destination port)."""
    out = ConnectCounts()
    for line in text.splitlines():
        if line.startswith("# lost "):
            out.lost += int(line.split()[2])
            continue
        if line.startswith("# window "):
            out.window_s = float(line.split()[2])
            continue
        m = _LINE.search(line)
        if not m:
            continue
        v6 = m[1] == "AF_INET6"
        src, dst = (m[6], m[7]) if v6 else (m[4], m[5])
        if v6 and src.startswith("::ffff:") and "." in src:
            src, dst = src[7:], dst[7:] if dst.startswith("::ffff:") else dst
        key = (src, dst, int(m[3]))
        if m[8] == "TCP_CLOSE" and m[9] == "TCP_SYN_SENT":
            out.attempts[key] += 1
        elif m[8] == "TCP_SYN_SENT" and m[9] == "TCP_CLOSE" and m[2] == "0":
            out.no_port[key] += 1
    return out
