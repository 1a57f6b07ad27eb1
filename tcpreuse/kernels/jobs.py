"""Lab jobs and kernel facts, the same code on every kernel (in-process or in a guest).

A LabJob names a scenario (a validation name, a file or a built-in) and overrides, as
JSON, so it can cross into a booted kernel through a file. With `native` it is a
validation job: every host group is put on the kernel's own profile and CONFIG_HZ (as
`validate` compares), and a scenario that sets a sysctl this kernel does not have is
reported not applicable instead of run. Facts are read from the kernel, never assumed:
its release, CONFIG_HZ (/proc/config.gz), the sysctls under /proc/sys/net, and whether
nftables can load an `ip` table (Debian's UML kernel has nf_tables without the ip family).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TcpreuseError
from ..result import RunResult

SYSCTL_ROOTS = ("net/ipv4", "net/core", "net/netfilter")


@dataclass
class KernelFacts:
    release: str
    hz: int
    hz_source: str
    sysctls: list[str] = field(default_factory=list)  # dotted names that exist
    nft_ip: bool = True  # nftables can load `table ip` (NAT, LB, loss via nftables)
    iptables_nat: bool = False  # iptables-legacy can load the nat table
    startup_s: float = 0.0  # wall time of `python -m tcpreuse load --help` (process start-up)
    jitter_ms: tuple[float, float] = (0.0, 0.0)  # p50, p99 wake-up delay of a 1 ms sleep
    connect_rate: float = 0.0  # loopback connect+accept+close cycles/s of one Python process

    @property
    def profile(self) -> str:
        """The model's profile for this kernel (linux-X.Y.Z from its release)."""
        from ..model.profiles import MAX_LINUX, parse_version, vstr

        v = min(parse_version(".".join(self.release.split("-")[0].split(".")[:3])), MAX_LINUX)
        return f"linux-{vstr(v)}"

    def has(self, sysctl: str) -> bool:
        return sysctl in set(self.sysctls)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KernelFacts:
        out = cls(**{k: d[k] for k in ("release", "hz", "hz_source", "sysctls", "nft_ip",
                                       "iptables_nat", "startup_s", "connect_rate") if k in d})
        if "jitter_ms" in d:
            out.jitter_ms = (float(d["jitter_ms"][0]), float(d["jitter_ms"][1]))
        return out

    @property
    def lead_s(self) -> float:
        """How long before its first attempt a load process must be started: its start-up
        (imports, the worker's fork) three times over plus a second, never less than on a
        fast host. Start-up inside UML varies 2-3x with the host's load (1.7-4.6 s
        measured); with twice it plus 0.5 s the first tens of attempts still went out up to
        0.2 s late, together. A start-up longer even than this delays all loads together
        (the lab's start barrier, lab/run.py _start_loads), never one alone."""
        from ..lab.run import LOAD_LEAD_S

        return max(LOAD_LEAD_S, round(3.0 * self.startup_s + 1.0, 2))


@dataclass
class LabJob:
    ref: str
    overrides: dict[str, Any] = field(default_factory=dict)
    approximate: bool = False
    native: bool = False  # validation: every host on the kernel's own profile and HZ
    netfilter: str = "auto"  # NAT/LB backend (lab/iptables.py choose())
    pace: bool = False  # dilate rates/times to the kernel's measured speed (pace.py)
    trace: bool = False  # record the kernel's verdicts per attempt (lab/tracing.py)
    capture: bool = False  # tcpdump each namespace interface (lab --capture) into the job's capture dir
    # one attempt in flight per load (load --max-in-flight 1): the scenario is sequential
    # in the model (validate's suite.SEQUENTIAL)
    sequential: bool = False
    # start where in the second the model's two versions differ most (validate/phase.py):
    # a version-discriminating scenario (validate's suite.DISCRIMINATING)
    discriminate: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabJob:
        return cls(ref=str(d["ref"]), overrides=dict(d.get("overrides") or {}),
                   approximate=bool(d.get("approximate")), native=bool(d.get("native")),
                   netfilter=str(d.get("netfilter") or "auto"), pace=bool(d.get("pace")),
                   trace=bool(d.get("trace")), capture=bool(d.get("capture")),
                   sequential=bool(d.get("sequential")), discriminate=bool(d.get("discriminate")))


@dataclass
class JobOutcome:
    result: RunResult | None = None
    error: str | None = None  # the one-line error the lab gave
    not_applicable: str | None = None  # why this kernel cannot run the scenario at all
    overrides: dict[str, Any] = field(default_factory=dict)  # what the lab ran (job + native)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def interrupted(self) -> bool:
        return bool(self.result is not None and self.result.meta.get("interrupted"))

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result.to_json(records=True) if self.result else None,
                "error": self.error, "not_applicable": self.not_applicable,
                "overrides": self.overrides, "notes": self.notes, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobOutcome:
        res = d.get("result")
        return cls(result=RunResult.from_json(res) if res else None, error=d.get("error"),
                   not_applicable=d.get("not_applicable"), overrides=dict(d.get("overrides") or {}),
                   notes=list(d.get("notes") or []), seconds=float(d.get("seconds") or 0.0))


# ---- facts ------------------------------------------------------------------------------

def list_sysctls(root: Path = Path("/proc/sys")) -> list[str]:
    out = []
    for sub in SYSCTL_ROOTS:
        base = root / sub
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(root)
            # per-interface and per-neighbour trees are not settings a scenario names
            if rel.parts[2:3] in (("conf",), ("neigh",)):
                continue
            out += [".".join((*rel.parts, f)) for f in files]
    return sorted(out)


def _probe(argv: list[str]) -> bool:
    """Run `argv` in a throwaway network namespace (unshare: gone when it exits)."""
    try:
        r = subprocess.run(["unshare", "--net", *argv], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def measure_startup(python: str = sys.executable) -> float:
    """Wall time of a `tcpreuse load` process that only starts (imports and exits)."""
    t0 = time.monotonic()
    try:
        subprocess.run([python, "-m", "tcpreuse", "load", "--help"], capture_output=True, timeout=120,
                       check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0.0
    return round(time.monotonic() - t0, 3)


def measure_jitter(n: int = 200, sleep_s: float = 0.001) -> tuple[float, float]:
    """p50 and p99 of how late a 1 ms sleep wakes up (ms): the kernel's scheduling jitter
    as a process of the lab sees it."""
    late = []
    for _ in range(n):
        t0 = time.perf_counter()
        time.sleep(sleep_s)
        late.append((time.perf_counter() - t0 - sleep_s) * 1000.0)
    late.sort()
    return round(late[n // 2], 3), round(late[min(n - 1, (n * 99) // 100)], 3)


CONNECT_LOOP = """
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(128)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 0.5:
    c = socket.socket(); c.connect(srv.getsockname()); a, _ = srv.accept(); c.close(); a.close(); n += 1
print(n / (time.perf_counter() - t0))
"""


def measure_connect_rate(python: str = sys.executable) -> float:
    """How many connect/accept/close cycles per second one Python process makes over
    loopback, in a throwaway network namespace (its TIME_WAITs go with it)."""
    try:
        r = subprocess.run(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {python} -"],
                           input=CONNECT_LOOP, capture_output=True, text=True, timeout=60, check=False)
        return round(float(r.stdout.strip()), 1)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0.0


def read_facts() -> KernelFacts:
    from ..validate.kernel import running_hz

    hz = running_hz()
    return KernelFacts(
        release=platform.release(), hz=hz.value, hz_source=hz.source, sysctls=list_sysctls(),
        nft_ip=_probe(["nft", "add table ip tcpr-probe"]),
        iptables_nat=_probe(["iptables-legacy", "-t", "nat", "-L", "-n"]),
        startup_s=measure_startup(), jitter_ms=measure_jitter(), connect_rate=measure_connect_rate(),
    )


# ---- running a job ----------------------------------------------------------------------

def missing_sysctls(sc: Any, facts: KernelFacts) -> list[str]:
    """Sysctls the scenario sets (explicitly, on a Linux host) that this kernel lacks."""
    from ..model.profiles import get_profile

    have = set(facts.sysctls)
    out = []
    for g in sc.host:
        if get_profile(g.profile).os != "linux":
            continue
        for name in g.settings:
            if name.startswith(("net.ipv4.", "net.core.", "net.netfilter.")) and name not in have \
                    and name != "net.ipv4.tcp_tw_recycle":  # realise() handles recycle = 0
                out.append(name)
    return sorted(set(out))


def native_overrides_for(ref: str, overrides: dict[str, Any], facts: KernelFacts) -> tuple[dict[str, Any], list[str]]:
    from ..validate import suite
    from ..validate.run import native_overrides

    base = suite.load(ref, overrides)
    return native_overrides(base, facts.hz, facts.profile)


def run_job(job: LabJob, facts: KernelFacts, progress: Any = None,
            capture_dir: Path | None = None) -> JobOutcome:
    """One lab run on the running kernel; errors come back as text, not exceptions.
    `capture_dir`: where a job with `capture` writes its pcaps."""
    from ..lab.run import LabOptions, run_lab
    from ..validate import suite

    t0 = time.monotonic()
    out = JobOutcome(overrides=dict(job.overrides))
    try:
        base = suite.load(job.ref, job.overrides)
        missing = missing_sysctls(base, facts)
        if missing:
            out.not_applicable = (
                f"{', '.join(missing)} does not exist on Linux {facts.release} (no "
                + ", ".join(f"/proc/sys/{m.replace('.', '/')}" for m in missing) + ")")
            return out
        sc = base
        if job.native:
            native, notes = native_overrides_for(job.ref, job.overrides, facts)
            out.overrides = {**job.overrides, **native}
            out.notes += notes
            sc = suite.load(job.ref, out.overrides)
        if job.pace:
            from .pace import pace_factor, pace_note, pace_overrides

            # the machine's load moves during a suite: the speed now, if slower than at boot
            now = measure_connect_rate()
            rate = min(facts.connect_rate, now) if now > 0 and facts.connect_rate > 0 else facts.connect_rate or now
            k = pace_factor(sc, rate)
            if k < 1.0:
                out.overrides = {**out.overrides, **pace_overrides(sc, k)}
                out.notes.append(pace_note(sc, k, rate))
                sc = suite.load(job.ref, out.overrides)
        phase = None
        if job.discriminate:
            from ..model.profiles import get_profile
            from ..validate.phase import discriminating_phase

            own = facts.profile
            found = discriminating_phase(job.ref, out.overrides, own,
                                         suite.cross_profile(get_profile(own).version))
            if found is not None:
                phase = found[0]
                out.notes.append(f"started with the first attempt {phase:.2f} s into a second of the "
                                 f"kernel's clock, where the model's two versions differ on the most "
                                 f"rows ({found[1]}; validate/phase.py)")
        out.result = run_lab(sc, LabOptions(approximate=job.approximate, progress=progress,
                                            netfilter=job.netfilter, lead_s=facts.lead_s,
                                            trace=job.trace,
                                            capture=capture_dir if job.capture else None,
                                            max_in_flight=1 if job.sequential else None,
                                            start_phase_s=phase))
    except TcpreuseError as e:
        out.error = str(e)
    finally:
        out.seconds = time.monotonic() - t0
    return out


def capture_dir_of(root: Path, k: int) -> Path:
    """Where job number k writes its captures under a batch's output directory."""
    return root / f"capture-{k:03d}"


def run_jobs(jobs: list[LabJob], facts: KernelFacts, progress: Any = None,
             each: Any = None, capture_root: Path | None = None) -> list[JobOutcome]:
    """Jobs in order; stops after an interrupted one (Ctrl-C ends the batch). A job with
    `capture` writes its pcaps into capture_dir_of(capture_root, k)."""
    outs = []
    for k, job in enumerate(jobs):
        if progress:
            progress(f"lab {k + 1}/{len(jobs)}: {job.ref}")
        o = run_job(job, facts, progress,
                    capture_dir_of(capture_root, k) if capture_root is not None else None)
        outs.append(o)
        if each:
            each(k, o)
        if o.interrupted:
            break
    return outs
