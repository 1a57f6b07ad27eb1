"""What a load run will cost, estimated before it starts, and refused when it cannot fit.

Two limits, both stated with the numbers behind them:

- **Rate.** A worker process is one CPU's worth of epoll reactor; each connection costs
  it about 50 µs of CPU on loopback (docs/load.md, "Speed": 52-54 µs per connection
  against nginx, about 80 % of it in the kernel), about 20,000/s per core. The limit,
  GENERATOR_RATE_PER_CPU, is half as much again, so a faster machine is not refused what
  it can do; workers beyond the machine's CPUs add nothing. An open loop asked for more than that falls behind its
  schedule at once: every latency it reports is the generator's, not the target's.
  Below it, whether the schedule holds (start lag p99 under 1 ms) depends on how busy the
  machine is, not on this limit: on the crowded 2-core VM (load average 7-10) the workers
  cost a median 77 µs of CPU per attempt when saturated, were preempted 0.5-1.25 times per
  attempt, and no rate down to 100/s held it (docs/load.md, "What bounds the ceiling");
  every run reports its own start lag, so it is not refused for that.
- **Memory.** Every attempt keeps a record (a few numbers per attempt in the workers,
  the merged table in the parent, and with --result or inside the lab a JSON rendering
  of it); BYTES_PER_ATTEMPT[_RESULT] are what that costs per attempt, from the sizes of
  those arrays and Python objects, rounded up (tests/test_load_budget.py checks them
  against tracemalloc's peak for a real merge of 100,000 attempts and its JSON: about
  320 and 750 bytes).

Sans-I/O: the caller passes the machine's CPUs and available memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GENERATOR_RATE_PER_CPU = 30_000.0  # connections/s one worker can start: ~20,000 measured, +50 %
BYTES_PER_ATTEMPT = 400  # worker arrays + the merged AttemptTable + percentile sorts
BYTES_PER_ATTEMPT_RESULT = 1_500  # ... plus RunResult.to_json and the JSON text (--result, lab)
MEMORY_SHARE = 0.8  # of the memory available now that a run may plan to use

OVERRIDE = "--force"
FD_RESERVE = 64  # descriptors a worker needs besides its sockets (epoll, pipes, stdio)


@dataclass
class Estimate:
    attempts: float  # expected attempts (an upper bound for a closed loop)
    rate: float | None  # connections/s asked for (open loop), None for a closed loop
    capacity: float  # connections/s the generator can start on this machine
    workers: int
    cpus: int
    memory: float  # bytes the records will take
    available: float  # bytes of memory available now
    concurrency: int = 0  # closed loop: connections in flight
    nofile: int = 0  # file descriptors the generator may open (RLIMIT_NOFILE hard limit); 0: unknown

    def problems(self) -> list[str]:
        out = []
        if self.rate is not None and self.rate > self.capacity:
            out.append(f"--rate {self.rate:,.6g}/s is more than this machine's generator can start: "
                       f"about {self.capacity:,.0f}/s ({min(self.workers, self.cpus)} worker process(es) "
                       f"on {self.cpus} CPU(s) at about {GENERATOR_RATE_PER_CPU:,.0f} connections/s each)")
        per_worker = math.ceil(self.concurrency / max(1, self.workers))
        if self.nofile and per_worker > self.nofile - FD_RESERVE:
            out.append(f"--concurrency {self.concurrency:,} puts {per_worker:,} connections in flight in each of "
                       f"{self.workers} worker(s), a socket each; a process may open {self.nofile:,} "
                       "file descriptors (RLIMIT_NOFILE hard limit)")
        if self.memory > MEMORY_SHARE * self.available:
            out.append(f"{self.attempts:,.0f} attempts would need about {size_text(self.memory)} of memory "
                       f"for their records; {size_text(self.available)} is available")
        return out


def size_text(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1000 or unit == "TB":
            return f"{b:,.0f} {unit}" if unit in ("B", "KB") else f"{b:,.1f} {unit}"
        b /= 1000
    return f"{b:,.1f} TB"  # pragma: no cover


def attempts_of(rate: float | None, duration: float | None, count: int | None, *, arrival: str = "constant",
                ramp_from: float = 0.0, capacity: float = math.inf) -> float:
    """Expected attempts of a run: the schedule's (a ramp's is its mean rate times its
    duration) or, for a closed loop, as many as the generator can start; capped by count."""
    if rate is not None:
        mean = (ramp_from + rate) / 2 if arrival == "ramp" else rate
        n = mean * duration if duration is not None else math.inf
    else:
        n = capacity * duration if duration is not None else math.inf
    if count is not None:
        n = min(n, count)
    return n


def estimate(rate: float | None, duration: float | None, count: int | None, *, workers: int, cpus: int,
             available: float, records_as_json: bool, arrival: str = "constant",
             ramp_from: float = 0.0, concurrency: int = 0, nofile: int = 0) -> Estimate:
    capacity = GENERATOR_RATE_PER_CPU * max(1, min(workers, cpus))
    n = attempts_of(rate, duration, count, arrival=arrival, ramp_from=ramp_from, capacity=capacity)
    per = BYTES_PER_ATTEMPT_RESULT if records_as_json else BYTES_PER_ATTEMPT
    return Estimate(attempts=n, rate=rate, capacity=capacity, workers=workers, cpus=cpus,
                    memory=n * per, available=available, concurrency=concurrency, nofile=nofile)


def refusal(problems: list[str], what: str = "load") -> str:
    """The one message that refuses a run, naming the flag that overrides."""
    return (f"{what} refused before starting: " + "; ".join(problems)
            + f". Lower the rate, concurrency or duration, or pass {OVERRIDE} to run it anyway")
