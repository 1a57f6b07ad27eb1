"""What-if sweeps and capacity searches on Dask.

A sweep runs a scenario over the cartesian product of `--grid` settings, N seeds per
point (grid.py); every (point, seed) is one simulation, identified by a hash of its
effective scenario (cache.py), computed by a Dask worker (runner.py, point.py) and
cached on the client as soon as it arrives, so an interrupted sweep, or a worker that
dies, loses no finished point. stats.py turns seeds into means and confidence intervals;
capacity.py searches the highest rate within a failure budget, for the scenario and for
each fix its diagnosis proposes; report/sweep.py makes the tables, files and HTML pages.
"""

from ..errors import TcpreuseError


class SweepError(TcpreuseError):
    """A sweep or capacity search that cannot run as asked (bad grid, no scheduler, ...)."""
