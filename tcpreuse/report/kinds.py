"""What a saved file is, and the report Page for it.

`tcpreuse report FILE` takes whatever the other verbs write: a RunResult (`simulate
--result`, `lab --result`, `analyze --save`, `load --result`), `lab --json`, `doctor --json`
(one document, or one per line from `doctor --watch --json`), `analyze --json`, `sweep
--json`, `capacity --json`, `validate --json`, or a pcap/pcapng capture itself. The kind is detected from
the content, not the file name.

Only what is already a result is read here: the command (tcpreuse.commands.report) analyses a
capture and diagnoses a run saved without findings, and hands the page its findings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TcpreuseError
from ..findings import Finding
from .html import Page

RUN_SOURCES = ("simulate", "lab", "analyze", "load")


class ReportError(TcpreuseError):
    """A file `tcpreuse report` cannot read or does not recognise."""


@dataclass
class Loaded:
    kind: str  # run | doctor | capture | capture-summary | sweep | capacity
    data: Any  # RunResult, list of doctor docs, CaptureAnalysis, dict
    findings: list[Finding] | None = None


def head(path: str | Path, n: int = 4) -> bytes:
    """The first `n` bytes of `path` (to tell a capture from JSON), or a ReportError."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(n)
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e.strerror}") from None


def load_json(path: str | Path) -> Loaded:
    """A result file (one JSON document, one per line, or `simulate --result FILE.parquet`)
    as the kind it is."""
    p = Path(path)
    if head(p) == b"PAR1":  # simulate --result FILE.parquet
        from ..result import RunResult

        try:
            run, doc = RunResult.load_parquet(p)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ReportError(f"{p}: a Parquet file, but not a tcpreuse result: {e}") from None
        findings = [Finding.from_json(f) for f in doc["findings"]] if "findings" in doc else None
        return Loaded("run", run, findings)
    try:
        text = p.read_text()
    except OSError as e:
        raise ReportError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{p}: neither JSON nor a pcap/pcapng capture") from None
    docs = _json_docs(text, p)
    return classify(docs, p)


def _json_docs(text: str, p: Path) -> list[Any]:
    if not text.strip():
        raise ReportError(f"{p}: empty file")
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as whole:
        docs = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError:
                if i == 1:
                    raise ReportError(f"{p}: not JSON ({whole.msg} at line {whole.lineno}) "
                                      "and not a pcap/pcapng capture") from None
                # a --watch stream cut mid-line: keep what is complete
                break
        return docs


def classify(docs: list[Any], p: Path | str = "<input>") -> Loaded:
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise ReportError(f"{p}: expected a JSON object written by tcpreuse")
    d = docs[0]
    src = d.get("source")
    if src == "doctor":
        return Loaded("doctor", [x for x in docs if x.get("source") == "doctor"])
    if src in RUN_SOURCES and "timeline" in d:
        from ..result import RunResult

        try:
            run = RunResult.from_json(d)
        except (KeyError, TypeError, ValueError) as e:
            raise ReportError(f"{p}: a {src} result, but malformed: {e}") from None
        findings = [Finding.from_json(f) for f in d["findings"]] if "findings" in d else None
        return Loaded("run", run, findings)
    if "analyses" in d:
        return Loaded("capture-summary", d["analyses"][0])
    if "counts" in d and "sources" in d:
        return Loaded("capture-summary", d)
    if "scenarios" in d and "kernel" in d and "agree" in d:
        return Loaded("validate", d)
    if d.get("kind") in ("sweep", "capacity"):
        return Loaded(d["kind"], d)
    raise ReportError(f"{p}: JSON, but not a result tcpreuse knows",
                      hint="give simulate --result, lab --result/--json, doctor --json, analyze --json/--save, "
                      "sweep --json, capacity --json output, or a capture file")


def page_of(loaded: Loaded, made_from: str = "") -> Page:
    from . import html

    if loaded.kind == "run":
        run = loaded.data
        if loaded.findings is None:
            raise ValueError("a run's page needs its findings: diagnose it first (tcpreuse.commands.report.load)")
        page = html.run_page(run, loaded.findings, made_from=made_from)
        if not len(run.attempts):
            page.notes.append("This result has no per-attempt records (write it with --result or --save): "
                              "the latency distribution and outcome plots need them.")
        return page
    if loaded.kind == "doctor":
        return html.doctor_page(loaded.data, made_from=made_from)
    if loaded.kind == "capture":
        return html.capture_page(loaded.data, loaded.findings or [], made_from=made_from)
    if loaded.kind == "capture-summary":
        return html.capture_doc_page(loaded.data, made_from=made_from)
    if loaded.kind == "validate":
        return html.validate_page(loaded.data, made_from=made_from)
    from . import sweep

    if loaded.kind == "sweep":
        return sweep.sweep_page(loaded.data, made_from=made_from)
    return sweep.capacity_page(loaded.data, made_from=made_from)
