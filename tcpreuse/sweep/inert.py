"""When a fix's run is the configuration's own run: settings a run never consulted.

`capacity` searches each fix the diagnosis proposes on its own configuration: the same
scenario, seeds and probe durations with the fix's `set` on top. Some fixes change a
setting that the configuration's runs never reach, and then the fix's run at a rate is,
event by event, the configuration's own run at that rate: the same summary, computed
twice. In the seed, `tcp_tw_recycle` off and the A10's ignore-MSL are such fixes (the
seed's analysis says they change nothing; here the runs prove it, probe by probe).

Each run records what it consulted (`evidence`: `Engine.consulted()`, sim/record.py
`Consulted`), and whether that proves a setting unconsulted is the model's to say, beside
the rule the setting acts through:

* tcp_tw_recycle turned off: model/recycle.py `recycle_consulted()` (no peer timestamp
  remembered on the fix's host group);
* the load balancer's ignore-MSL turned on: model/lb.py `ignore_msl_consulted()` (no SYN
  met a session held after close, and no SNAT).

This module only decides the sharing: which fixes are of those kinds, and whether a run's
evidence makes the fix's run that run. Any other setting is never shared: its fix is
simulated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..model.lb import ignore_msl_consulted
from ..model.recycle import recycle_consulted

if TYPE_CHECKING:
    from ..sim.engine import Engine

RECYCLE = "net.ipv4.tcp_tw_recycle"


def evidence(eng: Engine) -> dict[str, Any]:
    """What the run (an engine, finished or stopped) consulted, as its summary keeps it."""
    return dict(eng.consulted())


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
            stamps = ev["recycle_stamped"].get(group)
            if stamps is None or recycle_consulted(stamps):
                return None
            why.append(f"tcp_tw_recycle on {group} remembered no peer timestamp")
        else:
            held, snat = ev["lb_held_met"], ev["lb_snat"]
            if held is None or snat is None or ignore_msl_consulted(held, snat):
                return None
            why.append("no SYN met a session the load balancer held after close (ignore-MSL)")
    return "; ".join(why)
