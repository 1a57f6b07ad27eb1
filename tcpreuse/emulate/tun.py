"""A TUN device in the current network namespace, owned by this process.

The device is not persistent: it disappears when the process's descriptor closes (exit,
crash, kill -9), and with it the route to the emulated address, so nothing is left to
clean up. Packets are raw IPv4 (IFF_NO_PI).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct

from pyroute2 import IPRoute

from .profile import EmulateError

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class Tun:
    def __init__(self, name: str, routes: list[str]) -> None:
        """Create `name`, bring it up and route each address in `routes` (/32) to it."""
        if len(name) > 15:
            raise EmulateError(f"interface name too long: {name!r}")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise EmulateError(f"cannot open /dev/net/tun ({e.strerror}): the emulator needs "
                               "root and the tun module") from None
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=idx, state="up", mtu=1500)
                for a in routes:
                    ipr.route("replace", dst=a, dst_len=32, oif=idx)
        except Exception as e:
            os.close(self.fd)
            raise EmulateError(f"cannot set up TUN device {name}: {e}") from None
        self.name = name

    def read(self) -> bytes | None:
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return None

    def write(self, pkt: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # a full queue loses the packet, as a link would
            os.write(self.fd, pkt)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
