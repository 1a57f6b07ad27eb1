"""What the rules that read a kernel trace share: its summary document
(``Evidence.trace``, tcpreuse.trace.aggregate.Summary.to_json()) read per verdict."""

from __future__ import annotations

from typing import Any

__all__ = ["count", "hosts", "reasons", "top", "window"]


def count(doc: dict[str, Any], verdict: str) -> int:
    """How many traced events the kernel gave `verdict` (model/verdicts.py)."""
    return int(doc.get("verdicts", {}).get(verdict, 0))


def reasons(doc: dict[str, Any], verdict: str) -> dict[str, int]:
    """Reason -> count of the events with `verdict` (errno names for connect/bind errors)."""
    return {r["reason"]: r["count"] for r in doc.get("reasons", []) if r["verdict"] == verdict}


def top(doc: dict[str, Any], key: str, label: str, verdict: str, n: int = 5) -> str:
    """The `n` rows of table `key` with most `verdict` events, as "label (count), ..."."""
    rows = [r for r in doc.get(key, []) if r["verdicts"].get(verdict)]
    rows.sort(key=lambda r: -r["verdicts"][verdict])
    text = ", ".join(f"{r[label]} ({r['verdicts'][verdict]:,})" for r in rows[:n])
    return text + (" ..." if len(rows) > n else "") if text else "-"


def hosts(doc: dict[str, Any], verdict: str) -> list[str]:
    """Local addresses that saw `verdict`."""
    return sorted({r["endpoint"].rpartition(":")[0] for r in doc.get("locals", []) if r["verdicts"].get(verdict)})


def window(doc: dict[str, Any]) -> str:
    return f"in {doc.get('duration_s', 0):.1f} s of tracing (kernel {doc.get('kernel', '?')})"
