"""The attempt table kept in files (capture/spill.py): columns appended chunk by chunk,
replaced whole, read back as read-only maps, made in pieces (ColumnWriter), and the
directory gone once the store is closed."""

from __future__ import annotations

import numpy as np
import pytest

from tcpreuse.capture import chunked
from tcpreuse.capture.flows import Attempts
from tcpreuse.capture.spill import ColumnStore, column_writer


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
