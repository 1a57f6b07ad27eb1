"""The timeline of a capture (CaptureAnalysis.timeline(), the text report's and the
RunResult's): counted a block of the attempt table at a time, it is the per-second
attempts, failed and delayed of the RunResult's per-attempt rows, and its first failure is the earliest failed attempt,
whatever the order of the table's rows (they are in flow order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import Cli
from helpers.captures import T0, many_flows, windows_reuse, write_pcap
from helpers.chunked import one_pass

from tcpreuse.capture import flows
from tcpreuse.capture.synth import Seg, handshake
from tcpreuse.result import AttemptTable, Timeline

C, S = "10.0.0.2", "10.0.0.1"


def refused(t: float, port: int, isn: int) -> list[Seg]:
    return [Seg(t, C, port, S, 80, "S", isn, 0), Seg(t + 0.0001, S, 80, C, port, "RA", 0, isn + 1)]


def late_failure_on_an_early_flow() -> list[Seg]:
    """Port 40000 connects at 1 s and is refused at 100 s (one 4-tuple, used early and
    late); port 40001 is first used at 40 s and refused at 50 s: the first failure is at
    50 s, 49 s after the first packet."""
    return (handshake(T0 + 1, C, 40000, S, 80, 1000, 5000, ts=None) + refused(T0 + 100, 40000, 9_000_000)
            + handshake(T0 + 40, C, 40001, S, 80, 2000, 6000, ts=None) + refused(T0 + 50, 40001, 8_000_000)
            + handshake(T0 + 120, C, 40002, S, 80, 3000, 7000, ts=None))


CAPTURES = {
    "windows-port-cycles": lambda: windows_reuse(n_conn=400, ports=60),
    "many-clients": lambda: many_flows(60),
    "late-failure-on-an-early-flow": late_failure_on_an_early_flow,
}


def from_rows(t: AttemptTable) -> Timeline:
    """The per-second series as the RunResult's per-attempt rows give them (one step of a
    second here: the captures are short)."""
    rel = t.cols["t"] - t.cols["t"].min()
    sec = np.floor(rel).astype(np.int64)
    size = int(sec.max()) + 1
    delayed = t.cols["reason"] == t.code("reason", "ok_after_syn_retry")
    att, fail = np.bincount(sec, minlength=size), np.bincount(sec[t.failed_mask()], minlength=size)
    return Timeline(step_s=1.0, t=[float(i) for i in range(size)], attempts=att.tolist(), failed=fail.tolist(),
                    ok=(att - fail).tolist(), delayed=np.bincount(sec[delayed], minlength=size).tolist())


@pytest.mark.parametrize("name", list(CAPTURES))
@pytest.mark.parametrize("block", [None, 7])
def test_the_timeline_is_the_run_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                         block: int | None) -> None:
    an = one_pass(write_pcap(tmp_path / "c.pcap", CAPTURES[name]()))
    rr = an.to_run_result()
    if block:
        monkeypatch.setattr(flows, "ROW_BLOCK", block)
    tl, onset = an.timeline()
    assert tl.to_json() == from_rows(rr.attempts).to_json()
    t, failed = rr.attempts.cols["t"], rr.attempts.failed_mask()
    assert onset == (round(float(t[failed].min()), 6) if failed.any() else None)


def test_the_text_report_says_when_the_first_attempt_failed(tmp_path: Path, cli: Cli) -> None:
    path = write_pcap(tmp_path / "c.pcap", late_failure_on_an_early_flow())
    an = one_pass(path)
    assert an.timeline()[1] == pytest.approx(49.0)  # from the first packet, at 1 s
    code, out, err = cli(["analyze", str(path)])
    assert code == 0, err
    assert "first failure at 49.0 s" in out
