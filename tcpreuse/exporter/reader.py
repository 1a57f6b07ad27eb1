"""Consecutive live reads -> doctor's HostFacts and findings, with rates between reads.

``tcpreuse doctor`` takes two samples ``--interval`` apart in one run. The exporter reads
once per scrape instead (one sample: sysctls, counters, the socket table) and pairs it
with the previous read, so rates (new connections per tuple by socket cookie, counter
deltas) cover the time between two scrapes and a scrape never sleeps. The pair goes
through doctor's own parsing (:func:`tcpreuse.host.raw.to_observed`), aggregation
(:func:`tcpreuse.host.facts.build`) and checks (:func:`tcpreuse.diagnose.base.diagnose`).
Only the previous sample is kept, so memory does not grow with the number of scrapes.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..diagnose.base import HostFacts, diagnose, evidence_of
from ..errors import HostError
from ..findings import Finding
from ..host.observed import COUNTER_FILES, Observed
from ..host.raw import RawHost, RawSample, to_observed
from ..host.source import LinuxSource, LiveCollector


class ProcfsSource(LinuxSource):
    """LinuxSource reading /proc from another mount point (psutil's PROCFS_PATH).

    For a container that bind-mounts the host's procfs (``-v /proc:/host/proc:ro``):
    ``/proc/X`` is read as ``ROOT/X`` and ``/proc/net/X`` as ``ROOT/thread-self/net/X``
    (the network namespace of the reading thread, which ``--netns`` moves). The socket
    table comes from netlink in that namespace, as for doctor.
    """

    def __init__(self, procfs: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        root = procfs.rstrip("/") or "/"
        if not os.path.isdir(os.path.join(root, "sys")):
            raise HostError(f"{procfs} is not a procfs mount (no sys/ in it)",
                            hint="give where the host's /proc is mounted, e.g. --procfs /host/proc")
        self.procfs = root
        self._proc_net = f"{root}/thread-self/net" if os.path.exists(f"{root}/thread-self/net") else f"{root}/net"
        self.label = f"{self.label} (procfs {root})"

    def read_file(self, path: str) -> str:
        if path.startswith("/proc/net/"):
            real = self._proc_net + path[len("/proc/net"):]
        elif path.startswith("/proc/"):
            real = self.procfs + path[len("/proc"):]
        else:
            real = path
        with open(real, encoding="utf-8", errors="replace") as f:
            return f.read()


@dataclass
class Reading:
    """One read of the host, diagnosed."""

    facts: HostFacts
    findings: list[Finding]
    observed: Observed
    taken_at: float  # wall clock
    monotonic: float
    duration_s: float  # how long the read and the diagnosis took
    window_s: float | None  # seconds since the previous read (rates), None on the first


def _pair(prev: RawSample, cur: RawSample) -> RawSample:
    """The previous sample's counters and sockets with the current sysctls.

    ``to_observed`` reads sysctls from the first sample of a collection; the settings that
    hold now are the current ones.
    """
    files = {p: v for p, v in cur.files.items() if p not in COUNTER_FILES}
    files.update({p: v for p, v in prev.files.items() if p in COUNTER_FILES})
    unreadable = {p: v for p, v in cur.unreadable.items() if p not in COUNTER_FILES}
    unreadable.update({p: v for p, v in prev.unreadable.items() if p in COUNTER_FILES})
    return RawSample(t=prev.t, files=files, unreadable=unreadable, sockets=prev.sockets,
                     socket_error=prev.socket_error)


class Reader:
    """Reads a host (a LiveCollector with interval 0) and diagnoses it, one read per call.

    Thread-safe: concurrent scrapes wait for one read. ``fresh(max_age)`` returns the last
    reading when it is younger than ``max_age`` seconds (several Prometheus servers, or a
    scraper faster than ``--interval``, cost one read).

    Every read runs on one worker thread. The HTTP server answers each scrape on a new
    thread, and glibc gives each thread that allocates its own malloc arena: reads of a
    100,000-socket table (megabytes of numpy buffers) spread over new threads made the
    resident memory climb by ~0.7 MiB per scrape; on one thread it stays flat.
    """

    def __init__(self, source: LiveCollector) -> None:
        source.interval = 0.0  # one sample per read; the previous read gives the rates
        self.source = source
        self._prev: RawSample | None = None
        self._last: Reading | None = None
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tcpreuse-read")

    def prime(self) -> None:
        """Take the first sample, so the first scrape already has rates."""
        with self._lock:
            raw = self._worker.submit(self.source.collect).result()
            self._prev = raw.samples[-1]

    def read(self) -> Reading:
        with self._lock:
            return self._worker.submit(self._read).result()

    def fresh(self, max_age: float) -> Reading:
        with self._lock:
            last = self._last
            if last is not None and time.monotonic() - last.monotonic < max_age:
                return last
            return self._worker.submit(self._read).result()

    def _read(self) -> Reading:
        t0 = time.monotonic()
        raw = self.source.collect()
        cur = raw.samples[-1]
        prev = self._prev
        window = None
        if prev is not None and cur.t > prev.t:
            window = cur.t - prev.t
            raw = RawHost(meta=raw.meta, samples=[_pair(prev, cur), cur], processes=raw.processes)
        self._prev = cur
        self.source.last_raw = None  # keep only one sample alive between reads
        obs = to_observed(raw, self.source.label)
        ev = evidence_of([obs])
        (facts,) = ev.hosts.values()
        findings = diagnose(ev)
        reading = Reading(facts=facts, findings=findings, observed=obs, taken_at=time.time(),
                          monotonic=time.monotonic(), duration_s=time.monotonic() - t0, window_s=window)
        self._last = reading
        return reading
