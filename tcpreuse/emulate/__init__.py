"""A packet-level TCP client for non-Linux client profiles (Windows, macOS) in the lab.

The running kernel can only be a Linux client, whose ISNs are monotonic per 4-tuple
(RFC 6528): with it the seed incident's failure (a timestamp-less SYN whose ISN is below a
server TIME_WAIT's rcv_nxt) cannot happen. This package plays the client side of short TCP
connections the way the model's profile says a Windows or macOS host does, over a TUN
device in the client's namespace, against servers on the real kernel.

- `packet`: IPv4/TCP segments as bytes (build, parse, checksums);
- `profile`: every client parameter, taken from the model (`model.profiles`, `model.stacks`);
- `stack`: the client's TCP state machine, sans-I/O (segments and times in, segments out);
- `tun`, `run`: the TUN device and the loop that drives the state machine on a schedule.
"""
