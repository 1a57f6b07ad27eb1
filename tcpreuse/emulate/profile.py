"""Every parameter of the emulated client, taken from the model (one source of truth).

Nothing here is a new fact: the SYN schedule, give-up, errno names, TIME_WAIT length and
timestamp offer come from `model.stacks.client_stack()`, the dynamic port range from
`model.stacks.port_range()`, the ISN generator, port order, RST retry interval and TS clock
from the model parameters (`model.settings.PARAMS`), the SYN's look from
`model.stacks.syn_shape()`. A scenario host group, or a profile name with settings and
parameters, resolves to one frozen `EmuProfile` that the emulator process reads as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import TcpreuseError
from ..model.profiles import get_profile
from ..model.settings import resolve_params, resolve_settings
from ..model.stacks import client_stack, port_range, syn_shape


class EmulateError(TcpreuseError):
    """The emulator cannot do what it was asked (one clear line)."""


@dataclass(frozen=True)
class EmuProfile:
    profile: str  # model profile name, e.g. windows-2012r2
    os: str
    port_first: int
    port_num: int
    port_order: str  # sequential | random (host-wide pool, model.ports.HostPortPool)
    isn: str  # random | rfc6528
    offers_ts: bool
    ts_hz: float
    syn_offsets: tuple[float, ...]  # SYN send times from connect(), s
    give_up_s: float  # connect() fails with errno["timeout"] at this time
    rst_retry_s: float | None  # a SYN answered by RST is re-sent after this (Windows)
    abort_on_bad_ack: bool  # an ACK that does not ack the SYN fails connect() (else RST + wait)
    time_wait_s: float  # the client's own TIME_WAIT when it closes first
    errno: dict[str, str]
    window: int
    wscale: int
    mss: int
    layout: tuple[str, ...]
    ttl: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EmuProfile:
        d = json.loads(text)
        d["syn_offsets"] = tuple(d["syn_offsets"])
        d["layout"] = tuple(d["layout"])
        return cls(**d)


def emu_profile(name: str, settings: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None) -> EmuProfile:
    """The emulated client for a model profile with settings and model parameters as a
    scenario gives them (overrides of the profile's defaults)."""
    p = get_profile(name)
    if p.os not in ("windows", "macos"):
        raise EmulateError(f"the packet-level client emulates Windows and macOS hosts; {p.name} "
                           "is Linux: the lab runs the real kernel for it")
    eff, _notes = resolve_settings(p, dict(settings or {}))
    par = resolve_params(p, dict(params or {}))
    st = client_stack(p, eff, par)
    lo, hi = port_range(p, eff)
    shape = syn_shape(p, st.offers_ts)
    return EmuProfile(
        profile=p.name, os=p.os, port_first=lo, port_num=hi - lo + 1,
        port_order=str(par.get("port_order", "sequential")), isn=str(par.get("isn", "rfc6528")),
        offers_ts=st.offers_ts, ts_hz=float(par.get("ts_hz", 1000)),
        syn_offsets=st.syn_offsets, give_up_s=st.give_up_s, rst_retry_s=st.rst_to_syn_retry_s,
        abort_on_bad_ack=st.abort_on_bad_ack, time_wait_s=st.time_wait_s, errno=dict(st.errno),
        window=shape.window, wscale=shape.wscale, mss=shape.mss, layout=shape.layout, ttl=shape.ttl,
    )
