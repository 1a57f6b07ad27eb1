"""Kernel verdicts as evidence: bpftrace on stable tracepoints, one event per verdict.

formats (tracefs format files, pure) -> kernel (checks, tracefs, the running kernel's
numbering) -> program (the bpftrace text, pure) -> runner (the subprocess and its reader)
-> events (decode and classify, pure) -> aggregate (running summary, pure) -> render.
session ties them together for `tcpreuse trace` and `doctor --trace`.
"""
