"""Capture rules: connections ended by RST, and SYNs refused with RST."""

from __future__ import annotations

import numpy as np

from ...capture import flows
from ...capture.facts import by_client, by_server, pct
from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule


@rule("capture-rst-close", needs={"capture"})
def rst_close(ev: Evidence) -> list[Finding]:
    """Established connections whose first close was a RST (abortive close)."""
    an = ev.require_capture()
    a = an.attempts
    est = a["is_attempt"] & a["established"]
    n_est = int(est.sum())
    rst = est & (a["close"] == 2)
    n = int(rst.sum())
    if not n or n < 0.01 * n_est:
        return []
    out = []
    for who, label in ((flows.W_ORIG, "client"), (flows.W_RESP, "server")):
        rows = np.flatnonzero(rst & (a["closed_by"] == who))
        if not rows.size:
            continue
        senders = (by_client(an, rows) if who == flows.W_ORIG else by_server(an, rows))
        top = [f"{name} ({r.size:,})" for name, r in list(senders)[:5]]
        after_data = int(((a["orig_bytes"][rows] + a["resp_bytes"][rows]) > 0).sum())
        k = rows.size
        cause = (f"{pct(k / n_est)} of established connections ({k:,}) were ended by a RST from the "
                 f"{label} instead of a FIN exchange. An abortive close (SO_LINGER with a zero timeout, or "
                 "close() with unread data — TCPAbortOnData / TCPAbortOnClose) sends RST and frees the "
                 "4-tuple at once: the RST sender keeps no TIME_WAIT, any data still in flight is lost "
                 "and the peer sees ECONNRESET if it still reads or writes.")
        if label == "client":
            cause += (" Load generators and pools do this on purpose to avoid TIME_WAIT; it hides "
                      "port exhaustion rather than fixing it.")
        out.append(Finding(
            id="capture-rst-close",
            title=f"The {label} ends connections with RST (abortive close)",
            severity="warning" if label == "server" else "info",
            cause=cause,
            evidence=[EvidenceItem("connections closed by RST", k, pct(k / n_est)),
                      EvidenceItem("... after data was exchanged", after_data),
                      EvidenceItem(f"RST senders ({label})", ", ".join(top))],
            confidence=0.9,
            fixes=[Fix(id="graceful-close", title="Close gracefully: read to EOF, then close(); no SO_LINGER{1,0}",
                       commands=["remove setsockopt(SO_LINGER, {l_onoff=1, l_linger=0})",
                                 "read the peer's data before close() so none is left unread"],
                       caveat="The side that closes first then holds TIME_WAIT; plan ports for it.")]))
    return out


@rule("capture-refused", needs={"capture"})
def refused(ev: Evidence) -> list[Finding]:
    """SYNs answered by RST: nothing listens on that port (or a firewall rejects)."""
    an = ev.require_capture()
    a = an.attempts
    m = a["is_attempt"] & (a["answer"] == flows.A_RST) & np.isnan(a["t_synack"])
    if not m.any():
        return []
    out = []
    for server, rows in by_server(an, np.flatnonzero(m)):
        k = rows.size
        tot = int((a["is_attempt"] & (a["resp_port"] == a["resp_port"][rows[0]])
                   & (a["resp"] == a["resp"][rows[0]])).sum())
        answered = int((a["is_attempt"] & (a["resp"] == a["resp"][rows[0]])
                        & (a["resp_port"] == a["resp_port"][rows[0]]) & ~np.isnan(a["t_synack"])).sum())
        out.append(Finding(
            id="capture-refused",
            title=f"SYNs to {server} are refused with RST",
            severity="warning",
            cause=(f"{k:,} of {tot:,} SYNs to {server} were answered with RST (Zeek REJ): no socket listened "
                   "on that port at that moment (service down or restarting, wrong port), or a firewall "
                   "rejects them." + (f" {answered:,} other SYNs to it were accepted, so the listener "
                                      "came and went." if answered else "")),
            evidence=[EvidenceItem("refused SYNs", k, pct(k / max(tot, 1))),
                      EvidenceItem("accepted SYNs to the same port", answered)],
            confidence=0.85, hosts=[server.rpartition(":")[0]]))
    return out
