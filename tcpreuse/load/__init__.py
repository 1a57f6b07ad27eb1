"""The short-connection load generator (`tcpreuse load`) and the reference server
(`tcpreuse serve`), usable on their own against any address and run by the lab inside
network namespaces.

- target.py   addresses a user types (HOST:PORT, --source specs, port ranges)
- sockopt.py  the few socket options that matter here, under their kernel names
- protocol.py the line and HTTP/1.x exchanges, sans-I/O (client and server side)
- arrival.py  open-loop arrival schedules (constant, Poisson, ramp), sans-I/O
- kstat.py    /proc/net counters (nstat names) and the TIME_WAIT count
- worker.py   one worker process: an epoll reactor running attempts
- runner.py   the workers, per-second sampling, merged results, RunResult
- server.py   `serve`: asyncio (uvloop) protocol, SO_REUSEPORT worker processes
"""
