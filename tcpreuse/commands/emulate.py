"""`tcpreuse emulate TARGET --profile windows-2012r2 ...`: a Windows or macOS client, packet
by packet, over a TUN device in this network namespace (tcpreuse.emulate).

The lab runs it inside a client namespace for Windows and macOS host groups, and merges its
--result file like `load`'s; it can also be run by hand inside a namespace of your own
(root; it creates a TUN device named --tun and a /32 route for --source to it, both gone
when it exits). The host must forward between the TUN device and the path to the target.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _pairs(values: tuple[str, ...], what: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"expected NAME=VALUE, got {v!r}", param_hint=what)
        try:
            out[k] = json.loads(val)
        except json.JSONDecodeError:
            out[k] = val
    return out


@click.command()
@click.argument("target", metavar="HOST:PORT")
@click.option("--profile", "profile", default="windows-2012r2", show_default=True,
              help="Model profile of the emulated client (windows-*, macos).")
@click.option("--setting", "settings", multiple=True, metavar="NAME=VALUE",
              help="An OS setting of the profile, e.g. netsh.tcp.timestamps=enabled.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A model parameter, e.g. isn=random, port_order=sequential.")
@click.option("--profile-json", "profile_json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A resolved EmuProfile (what the lab passes); overrides --profile.")
@click.option("--source", required=True, help="The emulated host's IPv4 address.")
@click.option("--rate", type=float, required=True, help="Attempts per second (constant arrivals).")
@click.option("--duration", type=float, required=True, help="Seconds of schedule.")
@click.option("--count", type=int, default=None, help="At most this many attempts.")
@click.option("--close", type=click.Choice(["server", "client", "rst"]), default="server", show_default=True)
@click.option("--connect-timeout", type=float, default=21.0, show_default=True)
@click.option("--request-timeout", type=float, default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--start-at", default=None, metavar="UNIX_TIME|wait",
              help="Unix time of t = 0; `wait`: open the TUN device, print a ready line, then "
              "read that time from stdin (the lab's start barrier).")
@click.option("--phase", type=float, default=0.0, help="The first attempt is due at t = PHASE.")
@click.option("--host-name", default="client", show_default=True)
@click.option("--workload", default="load", show_default=True)
@click.option("--scenario", default="emulate", show_default=True)
@click.option("--tun", "tun_name", default="tcpr-emu0", show_default=True)
@click.option("--force", is_flag=True, help="Run a rate above the emulator's measured ceiling.")
@click.option("--drain", type=float, default=None,
              help="Attempts in flight may take this long after --duration (default: connect + request timeouts).")
@click.option("--result", "result_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the RunResult (with per-attempt records) here.")
@click.option("--quiet", is_flag=True)
def emulate(target: str, profile: str, settings: tuple[str, ...], params: tuple[str, ...],
            profile_json: Path | None, source: str, rate: float, duration: float, count: int | None,
            close: str, connect_timeout: float, request_timeout: float, seed: int,
            start_at: str | None, phase: float, host_name: str, workload: str, scenario: str,
            tun_name: str, force: bool, drain: float | None, result_path: Path | None, quiet: bool) -> None:
    """Play short TCP connections as a Windows or macOS client would, over a TUN device."""
    from ..emulate.profile import EmulateError, EmuProfile, emu_profile
    from ..emulate.run import EmuConfig, run_emulator
    from ..load.barrier import parse_start_at
    from ..load.target import resolve

    if profile_json is not None:
        try:
            prof = EmuProfile.from_json(profile_json.read_text())
        except (ValueError, TypeError, KeyError) as e:
            raise EmulateError(f"{profile_json}: not an emulator profile ({e})") from None
    else:
        prof = emu_profile(profile, _pairs(settings, "--setting"), _pairs(params, "--param"))
    start_time, wait_go = parse_start_at(start_at)
    ep = resolve(target)
    cfg = EmuConfig(target=(ep.host, ep.port), source=source, profile=prof, rate=rate,
                    duration=duration, count=count, close=close, connect_timeout=connect_timeout,
                    request_timeout=request_timeout, seed=seed, start_at=start_time, wait_go=wait_go, phase_s=phase,
                    host_name=host_name, workload=workload, scenario=scenario, tun_name=tun_name,
                    force=force, drain=drain)
    res = run_emulator(cfg)
    if result_path is not None:
        res.save(result_path, records=True)
    if not quiet:
        s = res.meta["load"]
        click.echo(f"emulate {prof.profile} {source} -> {s['target']}: {s['attempts']} attempts, "
                   f"{s['ok']} ok, {s['failed']} failed; reasons {s['reasons']}")
        for n in res.notes:
            click.echo(f"  note: {n}")
