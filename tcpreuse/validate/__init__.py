"""`tcpreuse validate`: the simulator judged by the real kernel.

Each scenario runs twice on this machine's kernel: in the lab (network namespaces, real
sockets) and in the simulator with every host's profile set to the running kernel
(``linux-native``, with this kernel's CONFIG_HZ). The two RunResults are reduced to the
same metrics (metrics.py) and compared row by row with a stated tolerance (compare.py).
suites/ holds the built-in validation scenarios; docs/validation.md is generated from a
run of the full suite.
"""
