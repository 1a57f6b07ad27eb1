"""User-Mode Linux: a second real kernel (Debian's `user-mode-linux`, Linux 6.1) as a process.

One boot runs a batch of lab jobs:

* root is the host's filesystem through hostfs, mounted **read-only** (`rootfstype=hostfs
  rootflags=/ ro`): a read-write hostfs root would write into the host's real files. The
  only writable host directory is the boot's own share (a fresh temporary directory),
  mounted at /run/tcpr-share; /tmp and /run are tmpfs.
* the kernel command line is split on spaces and cannot carry a command, so the boot runs
  an init script (a file in the boot's temporary directory): mounts, `modprobe -d` from the
  package's module tree (veth, sch_netem, conntrack, NAT, iptables, configs), then the
  host's Python with this source tree on PYTHONPATH: `python -m tcpreuse.kernels.guest`.
* everything of a boot lives in its temporary directory (init script, share, UML's umid
  directory via uml_dir=, its memory file via TMPDIR); UML runs in its own session, is
  killed with its whole process group on timeout, error, Ctrl-C or SIGTERM, and dies with
  this process (PR_SET_PDEATHSIG). A directory left by a SIGKILLed run names its owner,
  so `tcpreuse lab cleanup` removes it once the owner is dead.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ..errors import LabError, TcpreuseError
from ..signals import Signalled, raising
from . import Progress
from .guest import TAG
from .jobs import JobOutcome, KernelFacts, LabJob, capture_dir_of

DIR_PREFIX = "tcpr-uml-"
MODULE_ROOT = Path("/usr/lib/uml/modules")
BINARIES = ("linux", "linux.uml")
# veth, netem and the netfilter pieces the lab uses; `configs` gives /proc/config.gz (HZ);
# tun the emulator's device (/dev/net/tun, made by the devtmpfs the kernel mounts on /dev)
MODULES = ("configs", "veth", "sch_netem", "nf_conntrack", "nf_nat", "nf_tables",
           "ip_tables", "iptable_nat", "iptable_filter", "xt_MASQUERADE", "xt_statistic",
           "xt_conntrack", "xt_tcpudp", "xt_nat", "nf_conntrack_netlink", "tun")
MEM = "512M"
BOOT_S = 60.0  # boot, module loading and the guest's facts, with room on a busy machine
PR_SET_PDEATHSIG = 1
SLOWEST_CONNECT_RATE = 250.0  # loopback connects/s assumed when budgeting a paced job
# Outlives a SIGKILLed tcpreuse: once its pid ($1) is gone, kills UML's process group ($2;
# PR_SET_PDEATHSIG reaches only UML's first process) and removes the boot's directory ($3).
WATCH = ('while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; kill -9 "-$2" 2>/dev/null; '
         'sleep 1; kill -9 "-$2" 2>/dev/null; rm -rf -- "$3"')


class UmlInterrupted(TcpreuseError):
    exit_code = 130



@dataclass
class Install:
    binary: Path
    modules: Path  # the directory that holds <release>/modules.dep

    @classmethod
    def find(cls) -> Install:
        binary = next((Path(p) for b in BINARIES if (p := shutil.which(b))), None)
        if binary is None:
            raise LabError("User-Mode Linux is not installed (no `linux` binary)",
                           hint="apt-get install user-mode-linux (Debian), or use --kernel host")
        if not any(MODULE_ROOT.glob("*/modules.dep")):
            raise LabError(f"no UML module tree under {MODULE_ROOT} (the lab needs veth, "
                           "netem and netfilter modules)", hint="apt-get install user-mode-linux")
        if shutil.which("modprobe") is None:
            raise LabError("`modprobe` is not installed (Debian package kmod); UML needs it "
                           "to load its modules")
        return cls(binary, MODULE_ROOT)


def hidden_by_tmpfs(paths: list[str]) -> list[str]:
    """The host directories under /tmp or /run (the guest mounts tmpfs there) that `paths`
    need: the first level below /tmp or /run of each (a clone in /tmp/x with its .venv)."""
    out: list[str] = []
    for p in paths:
        parts = Path(os.path.realpath(p)).parts  # ("/", "tmp", "x", ...)
        if len(parts) >= 3 and parts[1] in ("tmp", "run"):
            top = str(Path(*parts[:3]))
            if top not in out:
                out.append(top)
    return out


def init_script(share: Path, python: str, pythonpath: str, modules: Path, guest_timeout_s: float) -> str:
    q = shlex.quote
    mods = " ".join(MODULES)
    # a checkout or interpreter under /tmp or /run is hidden by the guest's tmpfs: mount
    # those host directories again, read-only, at the same place
    again = "".join(f"mkdir -p {q(d)} && mount -r -t hostfs hostfs {q(d)} -o {q(d)} || "
                    f"echo \"{TAG} cannot mount {d}\"\n"
                    for d in hidden_by_tmpfs([python, sys.prefix, sys.base_prefix, *pythonpath.split(os.pathsep)]))
    return f"""#!/bin/sh
# tcpreuse UML init: the host's root is read-only; only /run/tcpr-share is written
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/tcpr-share /run/tcpr-mods/lib /run/netns
mount -t hostfs hostfs /run/tcpr-share -o {q(str(share))} || echo "{TAG} cannot mount the share"
{again}ln -s {q(str(modules))} /run/tcpr-mods/lib/modules
for m in {mods}; do
  modprobe -d /run/tcpr-mods "$m" >/dev/null 2>&1 || echo "{TAG} module $m not loaded"
done
ip link set lo up
cd /tmp
HOME=/tmp TMPDIR=/tmp PYTHONPATH={q(pythonpath)} PYTHONDONTWRITEBYTECODE=1 \\
  timeout -s KILL {int(guest_timeout_s)} {q(python)} -m tcpreuse.kernels.guest \\
  /run/tcpr-share/jobs.json /run/tcpr-share/out 2>&1
echo "{TAG} exit $?"
sync
poweroff -f >/dev/null 2>&1
halt -f
"""


def _pdeathsig() -> None:
    """In the child before exec: die with the parent (SIGKILL), whatever kills it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Boot:
    """One UML boot in its own temporary directory. start(), wait(), always close()."""

    install: Install
    jobs: list[LabJob]
    timeout_s: float
    progress: Progress = None
    python: str = field(default_factory=lambda: sys.executable)
    console: deque[str] = field(default_factory=lambda: deque(maxlen=60))

    def __post_init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{self.id}-"))
        me = psutil.Process()
        (self.dir / "owner.json").write_text(json.dumps({"pid": me.pid, "started": me.create_time()}))
        self.share = self.dir / "share"
        (self.share / "out").mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.watcher: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def out(self) -> Path:
        return self.share / "out"

    def _job_files(self) -> list[LabJob]:
        """Scenario files the guest could not see (its /tmp is its own) go into the share."""
        jobs = []
        for k, j in enumerate(self.jobs):
            p = Path(j.ref)
            if p.suffix == ".toml" and p.is_file():
                copy = self.share / f"scenario-{k:03d}.toml"
                shutil.copyfile(p, copy)
                j = LabJob(ref=f"/run/tcpr-share/{copy.name}", overrides=j.overrides,
                           approximate=j.approximate, native=j.native, netfilter=j.netfilter,
                           pace=j.pace, trace=j.trace, capture=j.capture)
            jobs.append(j)
        return jobs

    def argv(self) -> list[str]:
        return [str(self.install.binary), f"mem={MEM}", "rootfstype=hostfs", "rootflags=/", "ro",
                f"umid=tcpr-uml-{self.id}", f"uml_dir={self.dir / 'uml'}",
                f"init={self.dir / 'init.sh'}", "con0=null,fd:1", "con=null", "ssl=null", "quiet"]

    def start(self) -> None:
        import tcpreuse

        (self.dir / "uml").mkdir()
        (self.share / "jobs.json").write_text(json.dumps([j.to_json() for j in self._job_files()]))
        repo = str(Path(tcpreuse.__file__).resolve().parent.parent)
        init = self.dir / "init.sh"
        init.write_text(init_script(self.share, self.python, repo, self.install.modules,
                                    max(1.0, self.timeout_s - 10)))
        init.chmod(0o755)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "TMPDIR": str(self.dir)}
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                     start_new_session=True, preexec_fn=_pdeathsig)
        self.watcher = subprocess.Popen(
            ["sh", "-c", WATCH, "tcpr-uml-watch", str(os.getpid()), str(self.proc.pid), str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self.console.append(line)
            if line.startswith(TAG) and self.progress:
                self.progress("uml: " + line[len(TAG):].strip())

    def wait(self) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise LabError(f"the UML kernel did not finish within {self.timeout_s:g} s; killed"
                           + self._tail()) from None

    def _tail(self) -> str:
        lines = [ln for ln in self.console if ln.strip()][-8:]
        return ("; console: " + " | ".join(lines)) if lines else ""

    def kill(self) -> None:
        """SIGKILL UML's whole process group (its kernel and every guest process)."""
        p = self.proc
        if p is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
        # the guest's processes are host processes of the same group: wait until none is left
        deadline = time.monotonic() + 10
        while _group_alive(p.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            time.sleep(0.05)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.kill()
            self.watcher.wait()
        self.kill()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- results ---------------------------------------------------------------------
    def results(self, rc: int | None) -> tuple[KernelFacts, list[JobOutcome]]:
        f = self.out / "facts.json"
        if not f.exists():
            raise LabError(f"the UML kernel stopped before the lab started ({_exit(rc)})" + self._tail())
        facts = KernelFacts.from_json(json.loads(f.read_text()))
        outs = []
        for k in range(len(self.jobs)):
            p = self.out / f"{k:03d}.json"
            if p.exists():
                outs.append(JobOutcome.from_json(json.loads(p.read_text())))
            elif not (self.out / "done").exists():
                outs.append(JobOutcome(error=f"the UML kernel stopped before this lab run "
                                       f"finished ({_exit(rc)})" + self._tail()))
        return facts, outs

    def captures(self, k: int) -> list[Path]:
        """The pcaps job k wrote (lab --capture) into the share, before close() removes it."""
        d = capture_dir_of(self.out, k)
        return sorted(d.glob("*.pcap")) if d.is_dir() else []


def _exit(rc: int | None) -> str:
    if rc is None:
        return "killed"
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit {rc}"


def _group_alive(pgid: int) -> bool:
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(p.info["pid"]) == pgid:
                return True
    return False


def job_budget_s(job: LabJob) -> float:
    """Wall time one lab run may take in UML: its duration plus start-up and teardown,
    which run ~7x slower than on the host (namespaces, Python start-up per process)."""
    from ..validate import suite

    try:
        sc = suite.load(job.ref, job.overrides)
    except TcpreuseError:
        return 60.0  # the guest reports the error itself, quickly
    longest = max((w.start_s + (w.duration_s or sc.duration_s) for w in sc.workload), default=0.0)
    k = 1.0
    if job.pace:  # paced in the guest to its measured speed; assume a slow one here
        from .pace import pace_factor

        k = pace_factor(sc, SLOWEST_CONNECT_RATE)
    return 90.0 + 2.0 * max(sc.duration_s, longest) / k


class UmlKernel:
    name = "uml"

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s

    def run(self, jobs: list[LabJob], progress: Progress = None,
            capture_to: Path | None = None) -> tuple[KernelFacts, list[JobOutcome]]:
        """Boot, run `jobs`, return the kernel's facts and each job's outcome. Captures of
        jobs with `capture` are copied into `capture_to` (as NNN-file.pcap with more than
        one job) before the boot's files are removed."""
        from ..lab.netns import require_root

        require_root()  # UML itself does not need root; the lab inside runs as root anyway
        install = Install.find()
        timeout = self.timeout_s or BOOT_S + sum(job_budget_s(j) for j in jobs)
        boot = Boot(install, jobs, timeout, progress)
        try:
            with raising():
                try:
                    if progress:
                        progress(f"booting User-Mode Linux ({install.binary}), timeout {timeout:.0f} s")
                    boot.start()
                    rc = boot.wait()
                except (KeyboardInterrupt, Signalled) as e:
                    name = "SIGINT" if isinstance(e, KeyboardInterrupt) else signal.Signals(e.signum).name
                    raise UmlInterrupted(f"UML run interrupted by {name}; the kernel and its "
                                         "files are removed") from None
            if rc != 0:
                raise LabError(f"the UML kernel died ({_exit(rc)})" + boot._tail())
            facts, outs = boot.results(rc)
            if capture_to is not None:
                for k, o in enumerate(outs):
                    for f in boot.captures(k):
                        name = f.name if len(jobs) == 1 else f"{k:03d}-{f.name}"
                        shutil.copyfile(f, capture_to / name)
                        if o.result is not None:  # the paths the guest wrote are gone with it
                            caps = o.result.meta.setdefault("captures", [])
                            caps[:] = [c for c in caps if Path(c).name != f.name] + [str(capture_to / name)]
            return facts, outs
        finally:
            boot.close()


def leftovers() -> list[Path]:
    """Temporary directories of UML boots (for tests and cleanup)."""
    return sorted(p for p in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*") if p.is_dir())


def cleanup() -> list[str]:
    """Remove boot directories whose owner is dead (and kill what is left of their UML)."""
    gone = []
    for d in leftovers():
        try:
            own = json.loads((d / "owner.json").read_text())
            alive = abs(psutil.Process(int(own["pid"])).create_time() - float(own["started"])) < 0.01
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            alive = False
        if alive:
            continue
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if any(a == f"uml_dir={d / 'uml'}" for a in p.info["cmdline"] or ()):
                    p.kill()
        shutil.rmtree(d, ignore_errors=True)
        gone.append(str(d))
    return gone
