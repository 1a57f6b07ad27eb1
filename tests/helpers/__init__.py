"""What several test modules share. Data builders, hypothesis strategies and parametrize
lists are needed when a module is collected, so they cannot be fixtures: test modules
import them from here (`from helpers.captures import windows_reuse`), never from each
other. The shared fixtures (the in-process `cli`, `seed_pcap`, `make_ns`) are in fixtures.py, which
tests/conftest.py imports so that every test can ask for them.

- captures.py: crafted packet captures and the fuzzing strategy over them;
- scenarios.py: small scenario texts (a client closing first toward one server);
- tcpcraft.py: hand-made TCP segments and a loopback sniffer for the trace tests;
- sim_golden.py: the simulator's golden fingerprints (also a script: check or --record);
- netns.py: how the real-kernel tests name their network namespaces.
"""

from __future__ import annotations

from collections.abc import Callable

Cli = Callable[[list[str]], tuple[int, str, str]]
"""The `cli` fixture: `tcpreuse ARGV` run in-process, as (exit code, stdout, stderr)."""
