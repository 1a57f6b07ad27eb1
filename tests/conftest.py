"""Session-wide test setup: the suite never reads or writes the user's home (nor keeps
hypothesis's example database in the working tree).

Before any test module is imported (and so before dask reads its configuration or
matplotlib looks for its cache), HOME, the XDG base directories and the tools' own
config and scratch variables point into one temporary directory, removed at the end.
Subprocesses the tests start (`tcpreuse` as installed, dask workers, chromium) inherit it.
`sweep` without --cache, say, then caches under $XDG_CACHE_HOME/tcpreuse/sweep of that
directory, so two runs of the suite never share state through ~/.cache.

The fixtures several test modules share are defined in tests/helpers/fixtures.py and
imported here (`cli`: `tcpreuse ARGV` in-process; `seed_pcap`: a capture of the seed
incident; `make_ns`: network namespaces for the real-kernel tests, deleted after the
test). What a module needs when it is collected (data builders, hypothesis strategies)
is in the tests/helpers package too; test modules never import each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers.fixtures import cli, make_ns, seed_pcap  # noqa: F401 (shared fixtures)

# variable -> directory under the temporary home ("" is the home itself)
ISOLATED = {
    "HOME": "",
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "XDG_STATE_HOME": ".local/state",
    "MPLCONFIGDIR": ".config/matplotlib",
    "DASK_CONFIG": ".config/dask",
    "DASK_TEMPORARY_DIRECTORY": "dask-scratch",
    "IPYTHONDIR": ".ipython",
}

_home: Path | None = None
_saved: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Runs before collection imports the test modules."""
    global _home
    if _home is not None:
        return
    _home = Path(tempfile.mkdtemp(prefix="tcpreuse-test-home-"))
    for var, sub in ISOLATED.items():
        d = _home / sub
        d.mkdir(parents=True, exist_ok=True)
        _saved[var] = os.environ.get(var)
        os.environ[var] = str(d)
    # hypothesis keeps its example database and caches in ./.hypothesis by default: here instead
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_home / ".hypothesis")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _home
    if _home is None:
        return
    for var, old in _saved.items():
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old
    shutil.rmtree(_home, ignore_errors=True)
    _home = None


@pytest.fixture(scope="session")
def test_home() -> Path:
    """The temporary directory that stands in for the user's home during the run."""
    assert _home is not None
    return _home


# ---- evidence for the diagnosis rules (tests/test_rules_harness.py and others) -------------
# One builder per kind of evidence a rule reads: a RunResult of chosen attempt causes, the
# HostFacts of chosen hosts, a kernel trace summary, a crafted capture.


def run_evidence(causes: dict[str, tuple[int, int]] | None = None, counters: dict[str, dict[str, int]] | None = None,
                 ok: int = 20, scenario: str | None = None) -> Any:
    """A simulated run: `ok` clean attempts, and per cause (simulation reason code)
    `(failed, delayed)` attempts that met it; `counters` per host; optionally the built-in
    scenario it claims to come from (its settings, not its results)."""
    import math

    from tcpreuse.diagnose.base import Evidence
    from tcpreuse.result import AttemptTable, HostInfo, RunResult
    from tcpreuse.scenario.loader import load_scenario

    rows: list[tuple[str, str, float]] = [("ok", "ok", 1.0)] * ok
    for cause, (failed, delayed) in (causes or {}).items():
        rows += [(cause, "ETIMEDOUT", math.nan)] * failed + [(cause, "ok", 3000.0)] * delayed
    reasons = sorted({c for c, _, _ in rows} | {"ok"})
    outcomes = ["ok", "ETIMEDOUT"]
    n = len(rows)
    cols = {"t": [0.1 * i for i in range(n)], "connect_ms": [ms for _, _, ms in rows],
            "outcome": [outcomes.index(o) for _, o, _ in rows],
            "reason": [reasons.index(c) for c, _, _ in rows], "cause": [reasons.index(c) for c, _, _ in rows],
            "client": [0] * n, "server": [1] * n, "src": [0] * n, "sport": [40000 + i for i in range(n)],
            "dst": [1] * n, "dport": [80] * n}
    table = AttemptTable.build(cols, {"outcome": outcomes, "reason": reasons, "host": ["cli", "srv"],
                                      "addr": ["10.0.0.2", "10.0.0.1"]})
    run = RunResult(source="simulate", scenario=scenario or "harness", duration_s=n * 0.1, attempts=table,
                    counters=counters or {},
                    hosts={"cli": HostInfo("cli", "client", "client", "linux-6.8"),
                           "srv": HostInfo("srv", "server", "server", "linux-6.8")})
    return Evidence(source="simulate", run=run, scenario=load_scenario(scenario) if scenario else None)


def host_evidence(*hosts: Any) -> Any:
    """The doctor's evidence of HostFacts (tcpreuse.host.records) built by the test."""
    from tcpreuse.diagnose.base import Evidence

    return Evidence(source="doctor", hosts={h.name: h for h in hosts})


def trace_evidence(verdicts: dict[str, int] | None = None, reasons: dict[tuple[str, str], int] | None = None,
                   lost: int = 0, endpoint: str = "10.0.0.1:80") -> Any:
    """A kernel trace summary (the shape of tcpreuse.trace.aggregate.Summary.to_json()):
    verdict counts, (verdict, reason) counts, all seen at one local endpoint."""
    from tcpreuse.diagnose.base import Evidence

    verdicts = dict(verdicts or {})
    for (v, _), k in (reasons or {}).items():
        verdicts[v] = verdicts.get(v, 0) + k
    doc = {"kind": "tcpreuse-trace", "kernel": "6.8.0", "duration_s": 10.0, "events": sum(verdicts.values()),
           "lost_events": lost, "verdicts": verdicts,
           "reasons": [{"verdict": v, "reason": r, "count": k} for (v, r), k in (reasons or {}).items()],
           "flags": [{"verdict": v, "flags": "S", "count": k} for v, k in verdicts.items()],
           "tuples": [{"tuple": f"10.0.0.2:40000 -> {endpoint}", "events": sum(verdicts.values()),
                       "verdicts": verdicts}] if verdicts else [],
           "locals": [{"endpoint": endpoint, "process": "srv", "events": sum(verdicts.values()),
                       "verdicts": verdicts}] if verdicts else [],
           "processes": [{"process": "srv", "events": sum(verdicts.values()), "verdicts": verdicts}] if verdicts else []}
    return Evidence(source="trace", trace=doc)


def capture_evidence(segs: Any, truncate: int = 0) -> Any:
    """A capture of crafted segments (tcpreuse.capture.synth), read as `analyze` reads a
    file; `truncate` cuts that many bytes off its end."""
    from tcpreuse.capture.analysis import analyze_packets
    from tcpreuse.capture.decode import decode
    from tcpreuse.capture.formats import parse_frames
    from tcpreuse.capture.synth import frames_of, pcap_bytes
    from tcpreuse.diagnose.base import Evidence

    data = pcap_bytes(frames_of(sorted(segs, key=lambda s: s.t)))
    fr = parse_frames(data[:len(data) - truncate], "crafted")
    return Evidence(source="analyze", capture=analyze_packets(decode(fr), [fr.report], ["crafted.pcap"]))


@pytest.fixture(name="evidence")
def evidence_builders() -> dict[str, Any]:
    """The evidence builders above, by kind: run, hosts, trace, capture."""
    return {"run": run_evidence, "hosts": host_evidence, "trace": trace_evidence, "capture": capture_evidence}
