"""Network namespaces for the real-kernel tests: one naming scheme for every module.

Names are tcpr-<tag>-<pid>-<n>: the lab's prefix (so `tcpreuse lab cleanup` knows them),
the test's tag, and this process and a counter, so parallel runs and repeated tags never
meet. Only ever created by a test that runs as root, in namespaces of its own.
"""

from __future__ import annotations

import itertools
import os

from tcpreuse.lab.netns import Namespace

_seq = itertools.count()


def namespace(tag: str, **sysctls: object) -> Namespace:
    """A Namespace (not yet created) with `sysctls` written inside it when it is; a key may
    spell its dots as "__" (net__ipv4__tcp_tw_reuse=1)."""
    return Namespace(f"tcpr-{tag}-{os.getpid()}-{next(_seq)}",
                     sysctls={k.replace("__", "."): str(v) for k, v in sysctls.items()})
