"""Build: the simulator's hot modules are compiled with mypyc when possible.

The pure-Python source is the reference and stays importable; mypyc only makes it fast
(bench/sim_speed.py measures both). The capture reader's loops are also a small optional C
extension (tcpreuse/capture/_ccap.c; bench/analyze_speed.py), and the model's keyed-hash primitive
(tcpreuse/model/_khash.c, the same value as its Python definition in model/khash.py).
TCPREUSE_PURE_PYTHON=1 skips
compilation; a failed compilation falls back to pure Python with a warning.
"""

import os
import sys

from setuptools import Extension, setup

COMPILED = [
    "tcpreuse/model/seq.py",
    "tcpreuse/model/timewait.py",
    "tcpreuse/model/ports.py",
    "tcpreuse/model/listener.py",
    "tcpreuse/model/recycle.py",
    "tcpreuse/model/nat.py",
    "tcpreuse/model/lb.py",
    "tcpreuse/model/clocks.py",
    "tcpreuse/sim/arrivals.py",
    "tcpreuse/sim/host.py",
    "tcpreuse/sim/events.py",
    "tcpreuse/sim/sink.py",
    "tcpreuse/sim/engine.py",
]

ext_modules = []
if os.environ.get("TCPREUSE_PURE_PYTHON") != "1":
    try:
        from mypyc.build import mypycify

        # A fixed group name: the shared runtime module is `tcpreuse__mypyc`, not a hash of
        # the module list, so a changed list cannot leave modules pointing at a stale one.
        ext_modules = mypycify(["--config-file", "mypyc.ini", *COMPILED], opt_level="3",
                               group_name="tcpreuse")
    except Exception as e:  # no compiler, no mypyc: the pure-Python package still works
        print(f"tcpreuse: not compiling the simulator with mypyc ({e}); pure Python", file=sys.stderr)

# The capture reader's per-packet loops in plain C (CPython API only, no numpy headers).
# optional=True: a failed compilation warns and leaves the numpy reference (capture/backend.py).
if os.environ.get("TCPREUSE_PURE_PYTHON") != "1":
    ext_modules.append(Extension("tcpreuse.capture._ccap", ["tcpreuse/capture/_ccap.c"], optional=True,
                                 extra_compile_args=["-O3"]))
    # hash() of a tuple of ints without the tuple (model/khash.py); without it the definition runs
    ext_modules.append(Extension("tcpreuse.model._khash", ["tcpreuse/model/_khash.c"], optional=True,
                                 extra_compile_args=["-O3"]))

setup(ext_modules=ext_modules)
