"""Abortive close: connections ended by RST instead of a FIN exchange (SO_LINGER {1, 0}, or
close() with unread data). Read from a capture."""

from __future__ import annotations

from ...capture import flows
from ...capture.facts import by_client, by_server, count_where, pct, rows_where
from ...findings import EvidenceItem, Finding
from .. import fixes as fx
from ..base import Evidence, Mechanism

CLOSE = Mechanism("close", "Abortive close", {
    "capture-rst-close": "captured established connections ended by a RST from the client or the server",
})


@CLOSE.rule("capture", "capture-rst-close")
def from_capture(ev: Evidence) -> list[Finding]:
    """Established connections whose first close was a RST (abortive close)."""
    an = ev.require_capture()
    a = an.attempts
    n_est = count_where(an, lambda b: b["is_attempt"] & b["established"])
    rst = rows_where(an, lambda b: b["is_attempt"] & b["established"] & (b["close"] == 2))
    n = rst.size
    if not n or n < 0.01 * n_est:
        return []
    out = []
    closed_by = a["closed_by"][rst]
    for who, label in ((flows.W_ORIG, "client"), (flows.W_RESP, "server")):
        rows = rst[closed_by == who]
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
            fixes=[fx.graceful_close()]))
    return out
