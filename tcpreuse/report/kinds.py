"""What a saved file is, and the report Page for it.

`tcpreuse report FILE` takes whatever the other verbs write: a RunResult (`simulate
--result`, `lab --result`, `analyze --save`, `load --result`), `lab --json`, `doctor --json`
(one document, or one per line from `doctor --watch --json`), `analyze --json`, `sweep
--json`, `capacity --json`, `validate --json`, or a pcap/pcapng capture itself. The kind is detected from
the content, not the file name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TcpreuseError
from ..findings import Finding
from .html import Page

PCAP_MAGIC = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")
RUN_SOURCES = ("simulate", "lab", "analyze", "load")


class ReportError(TcpreuseError):
    """A file `tcpreuse report` cannot read or does not recognise."""


@dataclass
class Loaded:
    kind: str  # run | doctor | capture | capture-summary | sweep | capacity
    data: Any  # RunResult, list of doctor docs, CaptureAnalysis, dict
    findings: list[Finding] | None = None


def load(path: str | Path) -> Loaded:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise ReportError(f"{p}: cannot read: {e.strerror}") from None
    if head == b"PAR1":  # simulate --result FILE.parquet
        from ..result import RunResult

        try:
            run, doc = RunResult.load_parquet(p)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ReportError(f"{p}: a Parquet file, but not a tcpreuse result: {e}") from None
        findings = [Finding.from_json(f) for f in doc["findings"]] if "findings" in doc else None
        return Loaded("run", run, findings)
    if head in PCAP_MAGIC:
        from ..capture.analysis import analyze_paths
        from ..diagnose.base import Evidence, diagnose

        an = analyze_paths([p])[0]
        return Loaded("capture", an, diagnose(Evidence(source="analyze", capture=an)))
    try:
        text = p.read_text()
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
        findings = loaded.findings
        if findings is None:
            from ..diagnose.base import Evidence, diagnose

            findings = diagnose(Evidence(source=run.source, run=run))
        page = html.run_page(run, findings, made_from=made_from)
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
    import tcpreuse.sweep.render as sweep_render

    if loaded.kind == "sweep":
        return sweep_render.sweep_page(loaded.data, made_from=made_from)
    return sweep_render.capacity_page(loaded.data, made_from=made_from)
