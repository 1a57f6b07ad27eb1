"""When a fix's run is the configuration's own run: settings a run never consulted.

`capacity` searches each fix the diagnosis proposes on its own configuration: the same
scenario, seeds and probe durations with the fix's `set` on top. Some fixes change a
setting that the configuration's runs never reach, and then the fix's run at a rate is,
event by event, the configuration's own run at that rate: the same summary, computed
twice. In the seed, `tcp_tw_recycle` off and the A10's ignore-MSL are such fixes (the
seed's analysis says they change nothing; here the runs prove it, probe by probe).

What a run records so that this is decided exactly, not guessed (`evidence`):

* tcp_tw_recycle (model/recycle.py, model/timewait.tw_lifetime): its only two effects in
  the model, as in the kernel (<= 4.11), go through the host's per-peer timestamp cache.
  A TIME_WAIT gets the short 3.5 x RTO lifetime only when tcp_remember_stamp() (2.6.32
  tcp_v4_remember_stamp(), net/ipv4/tcp_ipv4.c; 3.5-4.11 net/ipv4/tcp_metrics.c) files
  an entry, which tcp_time_wait() calls only for a connection that used timestamps; the
  passive PAWS check in tcp_v4_conn_request() drops a SYN only against an entry. Entries
  are never removed during a run, so a host whose cache is empty at the end (or at the
  moment a stopped run stops) never had one: with tcp_tw_recycle=0 (no cache at all) the
  same run takes the same branch at every event.
* the load balancer's session hold (`lb.ignore_msl`, model/lb.py): a held session acts
  only when a SYN for its client tuple arrives before it expires (re-used for the same
  back end, or dropped, per `held_session_syn`; counted), or through the SNAT port it
  keeps. With no SNAT and no SYN that met an unexpired held session, reclaiming sessions
  at close (ignore-MSL: no hold) changes no decision: an expired held session is removed
  before the SYN is scheduled, the same as no session; RST and close on it are no-ops in
  both; a held session is not active, so least-connection scheduling counts the same.

Any other setting is never shared: its fix is simulated.
"""

from __future__ import annotations

from typing import Any

RECYCLE = "net.ipv4.tcp_tw_recycle"


def evidence(eng: Any) -> dict[str, Any]:
    """What the run (an engine, finished or stopped) shows it never consulted. It reads the
    engine's hosts' recycle caches and its LB's counters; an engine without them gives no
    evidence (then nothing is shared: tests/test_capacity.py notices)."""
    try:
        stamped: dict[str, int] = {}
        for h in eng.hosts.values():
            rc = h.recycle_cache
            stamped[h.group] = stamped.get(h.group, 0) + (len(rc.entries) if rc is not None else 0)
        lb = eng.lb
        return {"recycle_stamped": stamped,
                "lb_held_met": None if lb is None else int(lb.n_held_reused + lb.n_held_dropped),
                "lb_snat": None if lb is None else lb.snat is not None}
    except AttributeError:
        return {}


def shareable(fix_set: dict[str, Any]) -> bool:
    """Whether a fix's settings are all of the kinds `why_same` can prove unconsulted."""
    return bool(fix_set) and all(_kind(k, v) is not None for k, v in fix_set.items())


def _kind(key: str, value: Any) -> str | None:
    group, _, setting = key.rpartition(":")
    if group and setting == RECYCLE and str(value).strip() in ("0", "False", "false"):
        return "recycle"
    if key == "lb.ignore_msl" and value is True:
        return "ignore_msl"
    return None


def why_same(fix_set: dict[str, Any], summary: dict[str, Any]) -> str | None:
    """Why the fix's run equals this run of the configuration (its summary, with the
    evidence), or None when that is not proven."""
    ev = summary.get("evidence")
    if not ev or not shareable(fix_set):
        return None
    why = []
    for k, v in fix_set.items():
        if _kind(k, v) == "recycle":
            group = k.rpartition(":")[0]
            if ev["recycle_stamped"].get(group) != 0:
                return None
            why.append(f"tcp_tw_recycle on {group} remembered no peer timestamp")
        else:
            if ev["lb_held_met"] != 0 or ev["lb_snat"] is not False:
                return None
            why.append("no SYN met a session the load balancer held after close (ignore-MSL)")
    return "; ".join(why)
