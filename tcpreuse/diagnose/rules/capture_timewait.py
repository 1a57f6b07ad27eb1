"""Capture rules: SYNs that meet a 4-tuple still held by the server (TIME_WAIT or open).

The seed incident's signature in a capture: a client reuses a 4-tuple the *server*
closed less than 60 s earlier; the server, still in TIME_WAIT, answers the SYN with an
ACK for the old connection (tcp_timewait_state_process() -> TCP_TW_ACK, because the
SYN carries no newer timestamp and its ISN is not after the old rcv_nxt); the client
resets and sends its SYN again when its timer fires.
"""

from __future__ import annotations

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import by_client, median, os_guess, pct, retry_delay_text, span
from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule


def timestamp_fixes(os: str) -> list[Fix]:
    win = Fix(id="client-timestamps-windows", title="Turn TCP timestamps on in the Windows clients",
              commands=["netsh int tcp set global timestamps=enabled",
                        "PowerShell: Set-NetTCPSetting -SettingName InternetCustom -Timestamps Enabled"],
              caveat="With a newer TSval Linux accepts the SYN on its TIME_WAIT (and with tcp_tw_recycle, "
                     "recycles it); if the servers run tcp_tw_recycle=1 behind a NAT, turn that off first.")
    lin = Fix(id="client-timestamps-linux", title="Turn TCP timestamps on in the Linux clients",
              commands=["sysctl -w net.ipv4.tcp_timestamps=1"])
    if os == "windows":
        return [win]
    if os == "linux":
        return [lin]
    return [win, lin]


def common_fixes() -> list[Fix]:
    return [
        Fix(id="keepalive", title="Reuse connections (HTTP keep-alive / a connection pool)",
            commands=["a connection pool or keep-alive in the client: fewer new 4-tuples per second"]),
        Fix(id="client-closes-first", title="Let the client close first, so TIME_WAIT stays on the client",
            commands=["client: close() after reading the whole response; server: wait for the client's FIN"],
            caveat="The client then needs ports for 60 s per connection (Linux: tcp_tw_reuse=1 with "
                   "timestamps lets connect() take over its own TIME_WAIT)."),
        Fix(id="more-ports", title="More source ports or addresses per server 4-tuple",
            commands=["Windows: netsh int ipv4 set dynamicport tcp start=10000 num=55535",
                      "Linux: sysctl -w net.ipv4.ip_local_port_range='1024 65535'",
                      "or spread the clients over more source addresses / server ports"],
            caveat="A port must not come back toward the same server within 60 s."),
    ]


@rule("capture-syn-hit-timewait", needs={"capture"})
def syn_hit_timewait(ev: Evidence) -> list[Finding]:
    an = ev.require_capture()
    a = an.attempts
    att = a["is_attempt"]
    old = att & (a["answer"] == flows.A_OLD_ACK)
    tw = old & (a["prev_tw"] == 2) & (a["reuse_age_s"] < 60)
    out: list[Finding] = []
    for client, rows in by_client(an, np.flatnonzero(tw)):
        mine = att & (a["orig"] == a["orig"][rows[0]])
        n_client = int(mine.sum())
        n_tw = int((mine & (a["prev_tw"] == 2) & (a["reuse_age_s"] < 60)).sum())
        n = rows.size
        no_ts = int((~a["syn_has_ts"][rows]).sum())
        paws = int((a["tw_verdict"][rows] == reuse.V_PAWS).sum())
        model_ack = int(np.isin(a["tw_verdict"][rows], (reuse.V_ACK_OLD, reuse.V_PAWS)).sum())
        rst = int((a["n_rst_orig_pre"][rows] > 0).sum())
        retried = rows[a["n_syn"][rows] > 1]
        delay = median((a["t_syn2"][retried] - a["t_syn"][retried]) * 1000)
        ok = int((~np.isnan(a["t_synack"][rows])).sum())
        servers = sorted({f"{an.addr(int(a['resp'][r]))}:{int(a['resp_port'][r])}" for r in rows[:200].tolist()})
        os = os_guess(an, rows)
        ts_text = ("they carried no timestamps" if no_ts == n else
                   f"{no_ts:,} of them carried no timestamps" if no_ts else "they carried timestamps")
        retry_text = (f"; the client reset it and retried its SYN {retry_delay_text(delay)} later" if delay is not None
                      else "")
        seed = no_ts >= 0.5 * n and paws < 0.5 * n
        cause = (
            f"{pct(n / max(n_client, 1))} of SYNs from {client} ({n:,} of {n_client:,}; {pct(n / max(n_tw, 1))} "
            f"of the {n_tw:,} that met a server TIME_WAIT) reused a 4-tuple the server had closed "
            f"{span(a['reuse_age_s'][rows])} earlier; {ts_text}; the server answered with an ACK for the "
            f"old connection{retry_text}."
            + (" This is the seed incident's signature." if seed else "")
            + " The server closed first, so it held TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN); a SYN for "
            "that 4-tuple is accepted only if it carries a newer timestamp or its sequence number is "
            "after the old connection's rcv_nxt (tcp_timewait_state_process()); otherwise the answer "
            "is an ACK for the old connection (TCP_TW_ACK), the client sends RST, and the connect "
            "waits for the next SYN retransmission."
        )
        if paws:
            cause += (f" {paws:,} of these SYNs carried a TSval older than the old connection's last "
                      "one (PAWS reject): several hosts share the address (NAT), or the client's "
                      "timestamp offset changed.")
        evidence = [
            EvidenceItem("SYNs answered by an ACK for the old connection", n, pct(n / max(n_client, 1))),
            EvidenceItem("time since the server closed that 4-tuple", span(a["reuse_age_s"][rows])),
            EvidenceItem("SYNs without timestamps", no_ts),
            EvidenceItem("model agrees (tcp_timewait_state_process: ACK, not accept)", model_ack,
                         pct(model_ack / n)),
            EvidenceItem("client RST after that ACK", rst),
            EvidenceItem("SYN retry delay (median)", retry_delay_text(delay) or "-"),
            EvidenceItem("connected in the end", ok, f"{n - ok:,} never connected"),
            EvidenceItem("servers", ", ".join(servers[:5]) + (" ..." if len(servers) > 5 else "")),
            EvidenceItem("client SYNs look like", os),
        ]
        fixes = timestamp_fixes(os) if no_ts else []
        fixes += common_fixes()
        out.append(Finding(
            id="capture-syn-hit-timewait",
            title=f"SYNs from {client} land on the server's TIME_WAIT and get an ACK for the old connection",
            severity="critical" if ok < n else "warning",
            cause=cause, evidence=evidence,
            confidence=0.95 if model_ack >= 0.8 * n else 0.75,
            fixes=fixes, hosts=[client]))
    # challenge ACKs: the previous connection on the 4-tuple was still open
    chal = old & ~tw & (a["prev"] >= 0) & (a["prev_tw"] == 0)
    prev = np.where(a["prev"] >= 0, a["prev"], 0)
    still_open = (a["tw_holder"][prev] == 0) & np.isnan(a["t_rst_orig"][prev]) & np.isnan(a["t_rst_resp"][prev])
    chal &= still_open
    for client, rows in by_client(an, np.flatnonzero(chal)):
        n = rows.size
        out.append(Finding(
            id="capture-syn-hit-established",
            title=f"SYNs from {client} reuse 4-tuples whose previous connection is still open",
            severity="critical",
            cause=(f"{n:,} SYNs from {client} used a 4-tuple whose previous connection had not been "
                   f"closed (no FIN exchange, no RST seen), {span(a['reuse_age_s'][rows])} after its "
                   "last packet. The server answers such a SYN with a challenge ACK (RFC 5961), the "
                   "client resets it, and the server's connection is torn down. A NAT or load balancer "
                   "that forgot the mapping and reused the port does this."),
            evidence=[EvidenceItem("SYNs answered by a challenge ACK", n),
                      EvidenceItem("idle time of the old connection", span(a["reuse_age_s"][rows]))],
            confidence=0.7,
            fixes=[Fix(id="nat-timeouts", title="Keep NAT/LB idle timeouts above the connections' idle time",
                       commands=["sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=432000",
                                 "or TCP keep-alives shorter than the NAT's idle timeout"])],
            hosts=[client]))
    return out


@rule("capture-timewait-reuse-accepted", needs={"capture"})
def timewait_reuse_accepted(ev: Evidence) -> list[Finding]:
    """Reuse of a server TIME_WAIT 4-tuple that Linux accepted: worth knowing, harmless."""
    an = ev.require_capture()
    a = an.attempts
    m = a["is_attempt"] & (a["prev_tw"] == 2) & (a["reuse_age_s"] < 60) & (a["answer"] == flows.A_SYNACK)
    n = int(m.sum())
    if not n:
        return []
    rows = np.flatnonzero(m)
    acc = int((a["tw_verdict"][rows] == reuse.V_ACCEPT).sum())
    with_ts = int(a["syn_has_ts"][rows].sum())
    if with_ts == n:
        why = ("all of them carried timestamps, and a newer TSval is accepted whatever the sequence number; "
               "this holds as long as the clients keep sending timestamps from one clock.")
    elif with_ts == 0:
        why = ("none carried timestamps, so each was accepted only because its ISN happened to be after the old "
               "rcv_nxt: clients with random ISNs lose that bet about half the time, and the losers get an ACK "
               "for the old connection.")
    else:
        why = (f"{with_ts:,} carried timestamps (accepted by the newer TSval); the others were accepted only "
               "because their ISN was after the old rcv_nxt.")
    return [Finding(
        id="capture-timewait-reuse-accepted",
        title="Clients reuse 4-tuples the server still holds in TIME_WAIT; the server accepted them",
        severity="info",
        cause=(f"{n:,} SYNs reused a 4-tuple the server had closed {span(a['reuse_age_s'][rows])} earlier "
               f"(still in its 60 s TIME_WAIT) and were answered with a SYN-ACK. Linux accepts such a SYN "
               f"when its TSval is newer or its sequence number is after the old rcv_nxt; {why}"),
        evidence=[EvidenceItem("reused while in server TIME_WAIT, accepted", n),
                  EvidenceItem("model says accept", acc, pct(acc / n)),
                  EvidenceItem("with timestamps", with_ts)],
        confidence=0.9)]
