"""Sweeps beyond one machine: every trial of a grid a real DVC experiment, run in its own clone
on a worker of a Ray cluster (by default, one started on this machine), pushed to the shared git
and DVC remotes, pulled back by the head. `python -m sweep --help`; docs/sweeps.md."""


class SweepError(RuntimeError):
    """The sweep cannot start or go on; the message says why (and what to do) in one line."""
