"""The attempt table kept in files (capture/spill.py): columns appended chunk by chunk,
replaced whole, read back as read-only maps, made in pieces (ColumnWriter), and the
directory gone once the store is closed; the directory a killed analysis left behind is
removed by the next store, and nothing else is."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tcpreuse.capture import analysis, chunked
from tcpreuse.capture.flows import Attempts
from tcpreuse.capture.spill import ColumnStore, column_writer, sweep_stale


def test_columns_appended_replaced_renamed_and_deleted() -> None:
    st = ColumnStore()
    st.append("t", np.array([1.5, 2.5]))
    st.append("t", np.array([3.5]))
    st.append("n", np.array([7, 8, 9], dtype=np.int32))
    assert list(st) == ["t", "n"] and st.rows() == 3 and st.nbytes() == 3 * 8 + 3 * 4
    t = st["t"]
    assert t.tolist() == [1.5, 2.5, 3.5] and not t.flags.writeable
    with pytest.raises(ValueError):
        t[0] = 0.0
    with pytest.raises(ValueError, match="int64 rows appended to a int32 column"):
        st.append("n", np.array([1], dtype=np.int64))
    st["t"] = np.array([4.0, 5.0, 6.0])  # replaced: a new file, the old one gone
    assert t.tolist() == [1.5, 2.5, 3.5]  # an array read before keeps its pages
    assert st["t"].tolist() == [4.0, 5.0, 6.0] and list(st) == ["t", "n"]
    assert len(list(st.path.iterdir())) == 2
    st.append("x", np.zeros(0, dtype=np.int8))
    assert st["x"].size == 0 and st["x"].dtype == np.int8
    st.rename("x", "t")  # takes the place of t
    assert list(st) == ["t", "n"] and st["t"].dtype == np.int8 and len(list(st.path.iterdir())) == 2
    del st["n"]
    assert list(st) == ["t"] and len(list(st.path.iterdir())) == 1
    path = st.path
    st.close()
    assert not path.exists() and len(st) == 0


@pytest.mark.parametrize("in_files", [False, True])
def test_a_column_made_in_pieces(in_files: bool) -> None:
    cols: dict[str, np.ndarray] | ColumnStore = ColumnStore() if in_files else {}
    cols["a"] = np.arange(5)
    w = column_writer(cols, "b", 5, np.float64)
    w.put(np.array([1, 2]))
    w.put(np.array([3.5, 4.5, 5.5]))
    with pytest.raises(ValueError, match="more than 5 rows"):
        w.put(np.array([1.0]))
    w.done()
    assert list(cols) == ["a", "b"] and cols["b"].tolist() == [1.0, 2.0, 3.5, 4.5, 5.5]
    w = column_writer(cols, "a", 5, np.int8)  # replaces a column, in its place
    w.put(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="3 rows of 5 made"):
        w.done()
    w.put(np.array([4, 5]))
    w.done()
    assert list(cols) == ["a", "b"] and cols["a"].dtype == np.int8 and cols["a"].tolist() == [1, 2, 3, 4, 5]


def test_spilled_counter_widened_as_joining_the_parts_would() -> None:
    """A counter narrowed to 32 bits in one emitted part and not in a later one: the
    column in the file becomes 64 bits, as np.concatenate of the parts makes it."""
    b = chunked.ChunkBuilder(per_attempt=False)
    assert b.store is not None
    b._spill(Attempts({"n_syn": np.array([1, 2], dtype=np.int32)}))
    b._spill(Attempts({"n_syn": np.array([1 << 40], dtype=np.int64)}))
    b._spill(Attempts({"n_syn": np.array([3], dtype=np.int32)}))
    got = b.store["n_syn"]
    assert got.dtype == np.int64 and got.tolist() == [1, 2, 1 << 40, 3]
    assert chunked.ChunkBuilder(per_attempt=True).store is None


def test_spilling_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCPREUSE_CAPTURE_SPILL", "0")
    assert chunked.ChunkBuilder(per_attempt=False).store is None


# ---- directories a killed analysis left behind ---------------------------------------------


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR for this test and its subprocesses: an empty temporary directory (the real
    one's content is never looked at)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def _spill_dir(base: Path, pid: int, tag: str) -> Path:
    d = base / f"tcpreuse-attempts-{pid}-{tag}"
    d.mkdir()
    (d / "t.1").write_bytes(b"\0" * 64)
    return d


def test_only_dead_processes_directories_are_removed(tmpdir_env: Path, tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = _spill_dir(tmpdir_env, dead, "k1x_9z")
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = _spill_dir(tmpdir_env, live_proc.pid, "a2b3c4")  # a live process's
        mine = _spill_dir(tmpdir_env, os.getpid(), "d5e6f7")  # this process's
        locked = _spill_dir(tmpdir_env, _dead_pid(), "g8h9i0")  # its lock held (another pid namespace)
        fd = os.open(locked, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        old = tmpdir_env / "tcpreuse-attempts-q1w2e3r4"  # an older version's: no pid
        old.mkdir()
        plain = tmpdir_env / f"tcpreuse-attempts-{dead}-file"  # not a directory
        plain.write_text("x")
        other = _spill_dir(tmpdir_env, dead, "x")
        other = other.rename(tmpdir_env / f"someone-else-{dead}-x")
        target = tmp_path / "elsewhere"
        target.mkdir()
        (target / "keep").write_text("x")
        link = tmpdir_env / f"tcpreuse-attempts-{dead}-link"
        link.symlink_to(target, target_is_directory=True)

        st = ColumnStore()
        try:
            assert not stale.exists()
            assert all(p.exists() for p in (live, mine, locked, old, plain, other, link, target / "keep"))
            assert st.path.parent == tmpdir_env and st.path.name.startswith(f"tcpreuse-attempts-{os.getpid()}-")
            # a live store's directory is locked: not swept by another process whose pid
            # namespace does not see this one
            probe = os.open(st.path, os.O_RDONLY)
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(probe)
        finally:
            st.close()
        os.close(fd)  # the holder is gone: now it is stale
        assert sweep_stale() == [str(locked)] and not locked.exists()
    finally:
        live_proc.kill()
        live_proc.wait()
    assert sweep_stale(tmpdir_env) == [str(live)]  # its process ended
    assert mine.exists()


KILLED = textwrap.dedent("""
    import sys, time
    from tcpreuse.capture import analysis, chunked
    from tcpreuse.cli import main

    analysis.STREAM_MIN_BYTES = 0  # the small capture is streamed and its attempts spilled
    real = chunked.ChunkBuilder._spill

    def spill_then_wait(self, a):
        real(self, a)
        print(self.store.path, flush=True)
        time.sleep(60)  # killed here, mid-way

    chunked.ChunkBuilder._spill = spill_then_wait
    main(["analyze", sys.argv[1]])
""")


def test_a_killed_analysis_leaves_its_directory_and_the_next_removes_it(
        tmpdir_env: Path, seed_pcap: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`analyze` killed with SIGKILL while its attempt columns are in files leaves their
    directory (no cleanup runs); the next analysis that spills removes it, then its own."""
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(seed_pcap)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line, p.communicate(timeout=10)[1]
        left = Path(line)
        assert left.parent == tmpdir_env and any(left.iterdir())
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        p.kill()
        p.communicate()
    assert p.returncode == -signal.SIGKILL and any(left.iterdir())

    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)
    spilled = []
    real = chunked.ChunkBuilder._spill
    monkeypatch.setattr(chunked.ChunkBuilder, "_spill",
                        lambda self, a: (spilled.append(self.store.path), real(self, a))[1])
    code, _out, err = cli(["analyze", str(seed_pcap)])
    assert code == 0, err
    assert spilled and not left.exists()
    gc.collect()  # (the analysis's store goes with its last reference)
    assert not list(tmpdir_env.iterdir())  # and its own removed at the end
