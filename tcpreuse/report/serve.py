"""The HTML page of a `serve` run (`serve --html FILE`): what the server saw, who closed
first, and so where TIME_WAIT landed. A server run has no per-attempt records (the
clients have them), so the page is its counters, its settings and what they mean."""

from __future__ import annotations

from typing import Any

from .html import Page, TableData, pct

MEANING = {
    "connections": "connections accepted",
    "answers": "answers sent (requests answered)",
    "bad_requests": "requests that were not the protocol (answered ERR/4xx, then closed)",
    "server_closed_first": "our FIN went out first: the TIME_WAIT is on this server",
    "client_closed_first": "the client's FIN came first: the TIME_WAIT is on the client",
    "rst_sent": "closed with RST (--close rst): no TIME_WAIT anywhere",
    "resets_received": "ECONNRESET from clients (e.g. load --close rst)",
    "idle_timeouts": "connections cut after --idle-timeout without a request",
    "open_max": "peak open connections (summed over workers: an upper bound)",
}


def serve_page(stats: dict[str, int], config: dict[str, Any], made_from: str = "") -> Page:
    n = stats.get("connections", 0)
    closes = stats.get("server_closed_first", 0) + stats.get("client_closed_first", 0) + stats.get("rst_sent", 0)
    problems = stats.get("bad_requests", 0) + stats.get("resets_received", 0) + stats.get("idle_timeouts", 0)
    if not n:
        verdict, level = "No connection arrived.", "warn"
    elif problems:
        verdict, level = f"{problems:,} of {n:,} connections ended badly (bad request, reset or idle).", "warn"
    else:
        verdict, level = f"All {n:,} connections were answered and closed cleanly.", "good"
    page = Page(title=f"tcpreuse serve: {' '.join(config.get('listen', []))}",
                subtitle=f"Reference server · close {config.get('close')} · {config.get('workers')} worker(s)",
                verdict=verdict, verdict_level=level, made_from=made_from)
    if closes:
        where = max(("server", stats.get("server_closed_first", 0)), ("client", stats.get("client_closed_first", 0)),
                    ("nowhere (RST)", stats.get("rst_sent", 0)), key=lambda kv: kv[1])
        page.verdict_lines.append(f"TIME_WAIT landed mostly on the {where[0]}: {pct(where[1] / closes)} "
                                  "of the connections that closed.")
    page.tables.append(TableData("What the server saw", ["counter", "value", "meaning"],
                                 [[k, v, MEANING.get(k, "")] for k, v in stats.items()], numeric={1}))
    page.details.append(("Options", sorted((k, ", ".join(v) if isinstance(v, list) else v)
                                           for k, v in config.items())))
    return page
