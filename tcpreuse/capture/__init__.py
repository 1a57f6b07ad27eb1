"""Packet captures: a fast pcap/pcapng reader and the connection-reuse analyser.

Pipeline (each step vectorised with numpy; Python loops only where the data forces them):

- backend.py  — the per-packet stages behind one interface: numpy (reference) or C (_ccap.c, fast)
- formats.py  — find every record of a pcap/pcapng file (ReadReport: how far, what was skipped)
- decode.py   — link/IP/TCP headers and options of all frames at once -> Packets
- flows.py    — group by 4-tuple, cut into attempts, per-attempt reductions (zeek.py: conn_state, history)
- chunked.py  — the same attempts built chunk by chunk of packets (large pcap files, rotated sets as one stream: analysis.analyze_streamed)
- reuse.py    — 4-tuple reuse, the Linux TIME_WAIT verdict (tcpreuse.model.timewait), tw_recycle replay
- sources.py  — per client/server: timestamps, clocks (NAT), port pattern and cycle, rates
- analysis.py — CaptureAnalysis: counts, exports (CSV/Parquet, tshark names), RunResult; analyze_paths()

Findings come from the mechanism rules in tcpreuse/diagnose/rules/ (their `capture` evidence kind). synth.py writes crafted
captures and refdecode.py is the slow per-packet oracle the tests compare against.
"""
