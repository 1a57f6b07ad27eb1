"""Which lab runs are alive, so that `tcpreuse lab cleanup` removes only dead runs' leftovers.

A run writes a small JSON file (run id, its pid and process start time, its namespaces,
its scratch directory) *before* it creates anything, and removes it after teardown. A run
killed with SIGKILL leaves the file behind; cleanup then sees a dead owner and removes the
namespaces (which kills every process inside them: serve, load, tcpdump, anchors) and the
scratch directory. Lab namespaces without any state file are orphans and go too. Other
tools' "tcpr-*" namespaces (tests of doctor or capture, say) are left alone unless --all.

Every lab run calls cleanup() before it registers itself, so a killed run's leftovers
last only until the next run. A live run is never touched: it writes its state file
before it creates any namespace, and cleanup lists the namespaces *before* it reads the
state files, so a namespace it sees belongs to a run whose file it then reads (or to a
run that has ended or died).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from .netns import PREFIX, Namespace, list_namespaces

LAB_NS = re.compile(r"^tcpr-l([0-9a-f]{6})-")


def state_dir() -> Path:
    for d in (Path("/run/tcpreuse-lab"), Path(tempfile.gettempdir()) / "tcpreuse-lab"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError("no writable directory for lab run state")


@dataclass
class RunState:
    run_id: str
    pid: int
    started: float
    namespaces: list[str] = field(default_factory=list)
    scratch: str = ""

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.01
        except psutil.Error:
            return False


def _path(run_id: str) -> Path:
    return state_dir() / f"{run_id}.json"


def register(run_id: str, namespaces: list[str], scratch: str) -> RunState:
    me = psutil.Process()
    st = RunState(run_id=run_id, pid=me.pid, started=me.create_time(),
                  namespaces=namespaces, scratch=scratch)
    _path(run_id).write_text(json.dumps(asdict(st)))
    return st


def claim(run_id: str, namespaces: list[str]) -> bool:
    """Register `run_id` for this process unless it already is (a LabRun registers itself
    with its scratch directory first): whoever builds namespaces owns a state file, so
    that no other run's start-up takes them for a dead run's. True if this call wrote it."""
    if _path(run_id).exists():
        return False
    register(run_id, namespaces, "")
    return True


def unregister(run_id: str) -> None:
    with contextlib.suppress(OSError):
        _path(run_id).unlink()


def runs() -> list[RunState]:
    out = []
    for p in sorted(state_dir().glob("*.json")):
        try:
            out.append(RunState(**json.loads(p.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


@dataclass
class Cleaned:
    namespaces: list[str] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    alive: list[str] = field(default_factory=list)  # runs still going, left alone
    dead: list[str] = field(default_factory=list)  # "run <id> (pid N)" of the runs cleaned up

    def summary(self) -> str:
        """One line for a person: what was removed and whose it was."""
        whose = ", ".join(self.dead) if self.dead else "no registered run"
        what = [f"{len(self.namespaces)} namespace(s) (and the processes in them)"] if self.namespaces else []
        what += [f"{len(self.scratch)} scratch director(ies)"] if self.scratch else []
        return f"removed what dead lab runs left ({whose}): " + " and ".join(what or ["nothing"])


def cleanup(everything: bool = False) -> Cleaned:
    """Remove leftovers of dead lab runs (with everything=True: every tcpr-* namespace)."""
    out = Cleaned()
    live_ids = set()
    present = list_namespaces(PREFIX)  # first: see the module's docstring
    for st in runs():
        if st.alive():
            live_ids.add(st.run_id)
            out.alive.append(st.run_id)
            continue
        out.dead.append(f"run {st.run_id} (pid {st.pid})")
        for n in st.namespaces:
            if n in present:
                Namespace(n).delete()
                out.namespaces.append(n)
        if st.scratch and Path(st.scratch).name.startswith(PREFIX) and Path(st.scratch).is_dir():
            shutil.rmtree(st.scratch, ignore_errors=True)
            out.scratch.append(st.scratch)
        unregister(st.run_id)
    for n in present:
        if n in out.namespaces:
            continue
        m = LAB_NS.match(n)
        if everything or (m and m[1] not in live_ids):
            Namespace(n).delete()
            out.namespaces.append(n)
    return out
