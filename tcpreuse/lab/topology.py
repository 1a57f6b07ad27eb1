"""Realise a LabPlan on the running kernel, and take it down again.

Everything is created inside namespaces named from the plan (tcpr-l<run>-*): veth pairs
are created inside the upper namespace with their peer placed in the lower one, addresses,
routes, sysctls and nftables tables are written with `ip -n` / `ip netns exec`. The host's
own namespace is never touched, so deleting the namespaces removes everything.

Each namespace holds an *anchor* process (`sleep`), whose /proc/PID/net is that
namespace's /proc/net: counters and socket counts are read from Python without spawning.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import LabError
from . import iptables, state
from .ctevents import Recorder
from .flows import Flows
from .netns import PREFIX, Namespace, require_root, veth_pair
from .plan import LabPlan
from .procnet import ProcNet


class Topology:
    def __init__(self, plan: LabPlan, scratch: Path | None = None, python: str = sys.executable) -> None:
        self.plan = plan
        self.scratch, self.python = scratch, python
        self.recorders: dict[str, Recorder] = {}  # NAT/LB: conntrack events (ctevents.py)
        self.ns: dict[str, Namespace] = {}
        self.anchors: dict[str, subprocess.Popen[bytes]] = {}
        self.notes: list[str] = []
        self.settings: dict[str, dict[str, str]] = {}  # host -> sysctls as read back
        self._claimed = False  # this Topology wrote the run's state file (no LabRun did)

    def build(self, on_created: Callable[[str], None] | None = None) -> None:
        require_root()
        # a live run's namespaces always have a state file (see state.cleanup)
        self._claimed = state.claim(self.plan.run_id, self.plan.ns_names())
        for h in self.plan.hosts.values():
            ns = Namespace(h.ns)
            self.ns[h.key] = ns  # registered before creation: teardown removes half-made ones
            ns.create()
            if on_created:
                on_created(h.ns)
        for link in self.plan.links:
            veth_pair(self.ns[link.upper], link.upper_if, self.ns[link.lower], link.lower_if)
        for h in self.plan.hosts.values():
            ns = self.ns[h.key]
            ns.batch(h.ip_batch())
            if h.sysctls:
                ns.write_sysctls(h.sysctls)
                got = ns.read_sysctls(list(h.sysctls))
                for k, v in h.sysctls.items():
                    if got.get(k) != " ".join(v.split()):
                        raise LabError(f"[{h.ns}] {k} = {v!r} did not take effect "
                                       f"(reads {got.get(k)!r}); is it per namespace?")
            if h.nft:
                ns.nft(h.nft)
            if h.ipt:
                iptables.load(ns, h.ipt)
            if h.role in ("nat", "lb"):
                where = self.scratch or Path(tempfile.gettempdir())
                path = where / f"{PREFIX}flows-{self.plan.run_id}-{h.key}.txt"
                self.recorders[h.key] = Recorder.start(ns, self.python, path)
            self.anchors[h.key] = ns.popen(["sleep", "infinity"], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._delay()

    def _delay(self) -> None:
        """path.rtt_ms as netem delay (rtt/2 each way) on the router's downlinks, if possible."""
        rtt = self.plan.rtt_ms
        if not rtt:
            return
        router = self.ns["router"]
        half = f"{rtt / 2:.3f}ms"
        for dev in self.plan.hosts["router"].downlinks:
            r = router.run(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", half],
                           check=False)
            if r.returncode != 0:
                self.notes.append(f"path.rtt_ms = {rtt:g} not realised (netem unavailable: "
                                  f"{r.stderr.strip() or 'tc failed'}); the RTT is the veth's, "
                                  "tens of microseconds: timing differs, mechanisms do not")
                return

    def read_settings(self, names: dict[str, list[str]]) -> None:
        for key, keys in names.items():
            if key in self.ns:
                self.settings[key] = self.ns[key].read_sysctls(keys)

    def flows(self, key: str) -> tuple[Flows, int]:
        """The flows the NAT/LB recorded (wall-clock times) and the lost event batches."""
        rec = self.recorders.pop(key, None)
        if rec is None:
            return Flows(), 0
        out = rec.flows()
        if self.scratch is None:
            rec.path.unlink(missing_ok=True)
        return out

    def procnet(self, key: str) -> ProcNet:
        return ProcNet(self.anchors[key].pid)

    def teardown(self) -> None:
        """Kill every process in our namespaces and delete them. Idempotent."""
        for rec in self.recorders.values():
            rec.stop()
            if self.scratch is None:  # a file of our own in the temporary directory
                rec.path.unlink(missing_ok=True)
        self.recorders.clear()
        for ns in list(self.ns.values()):
            ns.delete()
        for p in self.anchors.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)
        self.ns.clear()
        self.anchors.clear()
        if self._claimed:
            state.unregister(self.plan.run_id)
            self._claimed = False
