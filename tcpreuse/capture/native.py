"""The optional C extension of the capture reader, behind one switch.

``tcpreuse/capture/_ccap.c`` does the per-packet loops (record walks, header decoding,
flow grouping, the per-segment pass) in one pass each; setup.py builds it when a C
compiler is there. The Python modules stay the reference: each caller asks :data:`lib`
and uses its own numpy (or mypyc) path when it is None — no compiler, a
``TCPREUSE_PURE_PYTHON=1`` build, or ``TCPREUSE_CAPTURE_C=0`` in the environment (which
``bench/analyze_speed.py`` uses to time both paths in one run). Tests set :data:`lib` to
None to compare the two.
"""

from __future__ import annotations

import os
from types import ModuleType

lib: ModuleType | None = None
if os.environ.get("TCPREUSE_CAPTURE_C", "1") != "0":
    try:
        from . import _ccap as lib  # type: ignore[attr-defined, no-redef]
    except ImportError:  # not built: the Python paths
        lib = None
