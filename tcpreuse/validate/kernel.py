"""What of the running kernel the model needs to be told: CONFIG_HZ.

The simulator takes HZ as a host model parameter (``hz``): TCP_TIMEOUT_MIN, the SYN-SENT
fast re-arm after an unacceptable ACK, is 2 jiffies (8 ms at HZ=250, 2 ms at HZ=1000).
HZ is a build option, so it is read from the kernel's config (/proc/config.gz, then
/boot/config-RELEASE); without either it is measured from the jiffies counter in
/proc/timer_list. Parsing is pure and tested on text; reading is separate.
"""

from __future__ import annotations

import gzip
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

# CONFIG_HZ values a kernel can be built with (kernel/Kconfig.hz), as the model accepts.
KNOWN_HZ = (100, 250, 300, 1000)


@dataclass(frozen=True)
class Hz:
    value: int
    source: str  # "/proc/config.gz", "/boot/config-6.18.44", "measured", "assumed"


def parse_config_hz(text: str) -> int | None:
    """CONFIG_HZ=N from a kernel .config text."""
    m = re.search(r"^CONFIG_HZ=(\d+)\s*$", text, re.MULTILINE)
    return int(m[1]) if m else None


def parse_jiffies(timer_list: str) -> int | None:
    """The `jiffies: N` line of /proc/timer_list."""
    m = re.search(r"^jiffies:\s*(\d+)", timer_list, re.MULTILINE)
    return int(m[1]) if m else None


def nearest_hz(rate: float) -> int:
    return min(KNOWN_HZ, key=lambda h: abs(h - rate))


def _read(path: Path) -> str | None:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", errors="replace") as f:
                return f.read()
        return path.read_text(errors="replace")
    except (OSError, EOFError):
        return None


def _measure(interval_s: float = 0.25) -> int | None:
    p = Path("/proc/timer_list")
    a = parse_jiffies(_read(p) or "")
    t0 = time.monotonic()
    time.sleep(interval_s)
    b = parse_jiffies(_read(p) or "")
    dt = time.monotonic() - t0
    if a is None or b is None or dt <= 0:
        return None
    return nearest_hz((b - a) / dt)


def running_hz() -> Hz:
    """CONFIG_HZ of the running kernel, and where it came from."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{platform.release()}")):
        text = _read(path)
        hz = parse_config_hz(text) if text else None
        if hz in KNOWN_HZ:
            return Hz(hz, str(path))
    measured = _measure()
    if measured is not None:
        return Hz(measured, "measured (/proc/timer_list jiffies over 0.25 s)")
    return Hz(1000, "assumed (no kernel config, /proc/timer_list unreadable)")
