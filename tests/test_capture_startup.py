"""`tcpreuse analyze --json` stays lean: a short command spends much of its time starting.

The helpers that replace numpy calls to keep numpy.ma out of the command (np.percentile
and np.unique ask whether an array is masked, which imports numpy.ma) must give numpy's
figures exactly; and the command must not import what it does not use.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tcpreuse.capture import flows
from tcpreuse.capture.synth import frames_of, handshake, pcap_bytes

floats = st.floats(-1e9, 1e9, allow_nan=False, width=64)


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=floats), st.floats(0, 100))
def test_percentile_is_numpys(a: np.ndarray, q: float) -> None:
    assert flows.percentile(a, q) == float(np.percentile(a, q))


@settings(max_examples=100, deadline=None)
@given(arrays(np.int64, st.integers(0, 40), elements=st.integers(-5, 5)))
def test_distinct_and_median_are_numpys(a: np.ndarray) -> None:
    assert flows.distinct(a).tolist() == np.unique(a).tolist()
    if a.size:
        assert flows.median(a) == float(np.median(a))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e9, 1e9, width=64) | st.just(float("nan"))))
def test_median_of_floats_is_numpys(a: np.ndarray) -> None:
    """Odd and even sizes, repeated values, NaN anywhere (the median is then NaN)."""
    want = float(np.median(a))
    got = flows.median(a)
    assert got == want or (np.isnan(got) and np.isnan(want))


# what `analyze --json` of one uncompressed file has no use for: numpy.ma (masked
# arrays), gzip, the terminal renderer, the HTML report, the simulator's engine, worker
# processes
NOT_IMPORTED = ("numpy.ma", "gzip", "rich", "tcpreuse.report.html", "tcpreuse.sim.engine", "concurrent.futures")


def test_analyze_json_imports_only_what_it_uses(tmp_path: Path) -> None:
    segs = []
    for i in range(30):
        # the server closes, the same 4-tuple comes back: reuse, verdicts, findings all run
        segs += handshake(1_700_000_000.0 + i, "10.0.0.2", 40000 + i % 3, "10.0.0.1", 80, 1000 * i, 5000 + i,
                          ts=(100 * i, 7))
    cap = tmp_path / "c.pcap"
    cap.write_bytes(pcap_bytes(frames_of(sorted(segs, key=lambda s: s.t))))
    code = ("import json, sys\n"
            "from tcpreuse.cli import main\n"
            "try:\n"
            f"    main(['analyze', {str(cap)!r}, '--json', '-j', '1'])\n"
            "finally:\n"
            "    sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["attempts"] == 30
    mods = set(json.loads(r.stderr.rsplit("MODULES ", 1)[1]))
    assert "numpy" in mods and "tcpreuse.capture.analysis" in mods  # it did run
    loaded = sorted(m for m in mods if any(m == x or m.startswith(x + ".") for x in NOT_IMPORTED))
    assert loaded == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()),
                    reason="glibc's mallopt")
def test_the_command_keeps_freed_memory_for_reuse() -> None:
    """glibc accepts the malloc settings the command asks for (32 MB is its largest mmap
    threshold: a larger one would be refused and the command would fault as before)."""
    from tcpreuse.commands.analyze import _keep_freed_memory

    assert _keep_freed_memory() is True
