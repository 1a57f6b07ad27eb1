"""The Prometheus exporter: doctor's numbers (port budgets per tuple, TIME_WAIT, rates,
time to exhaustion, listener queues, kernel counters, findings) as metrics, read fresh at
scrape time.

:mod:`.reader` turns consecutive live reads into doctor's ``HostFacts`` and findings (the
same collection, parsing and checks as ``tcpreuse doctor``); :mod:`.metrics` maps one
reading to metric families (pure); :mod:`.collector` is the prometheus_client Collector
and the HTTP server.
"""
