"""Drive the emulated client over a TUN device on a schedule; write a RunResult like `load`.

One process, one emulated host, one destination, constant arrivals (the lab's clients), every
loop bounded: attempts by --count and the schedule by --duration, and the whole run by a hard
wall-clock end (the schedule plus the longest an attempt may take plus a grace), whatever the
server does. The emulator's own ceiling (`MAX_RATE`) is measured by bench/emulate_speed.py;
a higher rate is refused unless forced, and attempts started late are counted and noted.
"""

from __future__ import annotations

import math
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..result import AttemptTable, HostInfo, RunResult, Timeline
from .packet import NotTcp, parse
from .profile import EmulateError, EmuProfile
from .stack import Client, Record

# Attempts/s one emulator process is allowed to schedule. bench/emulate_speed.py on the
# 2-core reference machine, heavily loaded (load average 17): the state machine alone does
# ~4,600 full exchanges per CPU second; on the real kernel the start lag p99 was 14 ms at
# 200/s and the schedule was lost at 800/s. 400/s leaves room for the kernel under test and
# the other emulators of a lab. Above it: refused unless --force.
MAX_RATE = 400.0
GRACE_S = 2.0  # after the last attempt could have ended: stop regardless
LATE_S = 0.010  # a start this late is noted (the mechanisms here play out over seconds)


@dataclass
class EmuConfig:
    target: tuple[str, int]
    source: str
    profile: EmuProfile
    rate: float
    duration: float
    count: int | None = None
    close: str = "server"
    connect_timeout: float = 21.0
    request_timeout: float = 30.0
    seed: int = 0
    start_at: float | None = None  # Unix time of t = 0 (several emulators interleave)
    phase_s: float = 0.0  # the first attempt is due at t = phase_s
    host_name: str = "client"
    workload: str = "load"
    scenario: str = "emulate"
    tun_name: str = "tcpr-emu0"
    force: bool = False
    drain: float | None = None  # attempts in flight may take this long after the schedule
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise EmulateError(f"--rate must be a positive number, not {self.rate}")
        if not (0 < self.duration <= 86400):
            raise EmulateError(f"--duration must be between 0 and a day, not {self.duration}")
        if self.count is not None and self.count <= 0:
            raise EmulateError("--count must be positive")
        if self.rate > MAX_RATE and not self.force:
            raise EmulateError(
                f"{self.rate:g} attempts/s is above what one emulator holds on schedule "
                f"(~{MAX_RATE:g}/s, bench/emulate_speed.py); scale the scenario down keeping its "
                "ratios, or pass --force to try anyway")

    @property
    def attempts(self) -> int:
        n = max(0, math.ceil((self.duration - self.phase_s) * self.rate - 1e-9))
        return min(n, self.count) if self.count is not None else n

    @property
    def wall_bound_s(self) -> float:
        """The hard end of the run, from t = 0."""
        if self.drain is not None:
            return self.duration + self.drain + GRACE_S
        last = min(self.profile.give_up_s, self.connect_timeout) + self.request_timeout
        tw = self.profile.time_wait_s if self.close == "client" else 0.0
        return self.duration + last + min(tw, 5.0) + GRACE_S


def _ip(a: str) -> int:
    import ipaddress

    return int(ipaddress.IPv4Address(a))


def run_emulator(cfg: EmuConfig, tun: Any = None) -> RunResult:
    """Run the schedule over `tun` (a Tun, or anything with fileno-less read/write/fd)."""
    cfg.check()
    from .tun import Tun

    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    own_tun = tun is None
    if own_tun:
        tun = Tun(cfg.tun_name, [cfg.source])
    try:
        t0_unix = cfg.start_at if cfg.start_at is not None else time.time()
        t0 = time.monotonic() + (t0_unix - time.time())
        cl = Client(cfg.profile, _ip(cfg.source), _ip(cfg.target[0]), cfg.target[1], close=cfg.close,
                    connect_timeout_s=cfg.connect_timeout, request_timeout_s=cfg.request_timeout,
                    seed=cfg.seed, t_origin=t0)
        lags = _loop(cfg, cl, tun, t0, stop)
    finally:
        if own_tun:
            tun.close()
        for s, h in old.items():
            signal.signal(s, h)
    return build_result(cfg, cl.records, lags, t0_unix, interrupted=bool(stop),
                        stray_rsts=cl.stray_rsts, unfinished=cl.in_flight, t0_mono=t0)


def _loop(cfg: EmuConfig, cl: Client, tun: Any, t0: float, stop: list[int]) -> list[float]:
    n = cfg.attempts
    step = 1.0 / cfg.rate
    hard_end = t0 + cfg.wall_bound_s
    k = 0
    lags: list[float] = []
    fd = tun.fd
    while not stop:
        now = time.monotonic()
        if now >= hard_end:
            break
        out = []
        while k < n and t0 + cfg.phase_s + k * step <= now:
            due = t0 + cfg.phase_s + k * step
            lags.append(now - due)
            out += cl.connect(now, due)
            k += 1
        out += cl.on_timer(now)
        for seg in out:
            tun.write(seg.encode())
        if k >= n and cl.in_flight == 0:
            break
        nxt = min(t0 + cfg.phase_s + k * step if k < n else math.inf, cl.next_timer(), hard_end)
        wait = max(0.0, nxt - time.monotonic())
        r, _, _ = select.select([fd], [], [], min(wait, 0.5))
        if not r:
            continue
        now = time.monotonic()
        for _ in range(256):  # drain what is queued, bounded per turn
            pkt = tun.read()
            if pkt is None:
                break
            try:
                seg = parse(pkt)
            except NotTcp:
                continue
            for reply in cl.on_segment(seg, now):
                tun.write(reply.encode())
    return lags


def build_result(cfg: EmuConfig, records: list[Record], lags: list[float], t0_unix: float, *,
                 interrupted: bool, stray_rsts: int = 0, unfinished: int = 0,
                 t0_mono: float | None = None) -> RunResult:
    """The records as `load` reports them: one RunResult for one client and one workload."""
    recs = sorted(records, key=lambda r: r.due)
    outcomes = sorted({r.outcome for r in recs}, key=lambda o: (o != "ok", o))
    reasons = sorted({r.reason for r in recs} | {r.cause for r in recs if r.cause})
    cols: dict[str, Any] = {
        "t": [r.due for r in recs],
        "connect_ms": [r.connect_ms for r in recs],
        "syn_tries": [r.syn_tries for r in recs],
        "outcome": [outcomes.index(r.outcome) for r in recs],
        "reason": [reasons.index(r.reason) for r in recs],
        "cause": [reasons.index(r.cause) if r.cause else -1 for r in recs],
        "workload": [0] * len(recs), "client": [0] * len(recs),
        "src": [0] * len(recs), "sport": [r.sport for r in recs],
        "dst": [1] * len(recs), "dport": [cfg.target[1]] * len(recs),
    }
    table = AttemptTable.build(cols, {"outcome": outcomes, "reason": reasons, "workload": [cfg.workload],
                                      "host": [cfg.host_name], "addr": [cfg.source, cfg.target[0]]})
    end = max((r.end for r in recs), default=0.0)
    duration = max(cfg.duration, end, 1e-6)
    nsec = max(1, math.ceil(duration - 1e-9))
    tl = Timeline.per_second(table, nsec)
    failed = table.failed_mask()
    lag = np.asarray(lags) * 1000.0
    late = int((lag > LATE_S * 1000).sum())
    notes = list(cfg.notes)
    if interrupted:
        notes.append("interrupted: the results cover the attempts that ended before the stop")
    if unfinished:
        notes.append(f"{unfinished} connection(s) still open at the emulator's hard end "
                     f"({cfg.wall_bound_s:g} s); attempts decided before it are recorded")
    if lags and late > 0.01 * len(lags):
        notes.append(f"{late} of {len(lags)} attempts started more than 10 ms late (p99 "
                     f"{float(np.percentile(lag, 99)):.1f} ms): the emulator did not keep up")
    p = cfg.profile
    ok = int((~failed).sum())
    summary = {
        "target": f"{cfg.target[0]}:{cfg.target[1]}", "mode": "open", "arrival": "constant",
        "rate_target": cfg.rate, "close": cfg.close, "duration_s": round(cfg.duration, 6),
        "attempts": len(recs), "ok": ok, "failed": len(recs) - ok,
        "attempts_per_s": round(len(recs) / cfg.duration, 3) if cfg.duration else 0.0,
        "reasons": table.counts("reason"),
        "start_lag": {"late_starts": late,
                      "p50": round(float(np.percentile(lag, 50)), 3) if lags else None,
                      "p99": round(float(np.percentile(lag, 99)), 3) if lags else None,
                      "max": round(float(lag.max()), 3) if lags else None},
        "stray_rsts": stray_rsts, "emulated": p.profile,
    }
    host = HostInfo(name=cfg.host_name, group=cfg.workload, role="client", profile=p.profile,
                    addresses=[cfg.source],
                    settings={"emulated": True, "isn": p.isn, "port_order": p.port_order,
                              "timestamps": p.offers_ts, "ports": f"{p.port_first}-{p.port_first + p.port_num - 1}"})
    return RunResult(source="emulate", scenario=cfg.scenario, duration_s=round(duration, 6),
                     attempts=table, timeline=tl, counters={}, hosts={cfg.host_name: host},
                     seed=cfg.seed, notes=notes,
                     meta={"t0_unix": round(t0_unix, 6), "t0_monotonic": None if t0_mono is None else round(t0_mono, 6),
                           "load": summary, "emulator": p.to_json()})
