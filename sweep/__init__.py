"""Sweeps beyond one machine: every trial of a grid a real DVC experiment, run in its own clone
on a worker of a Ray cluster (by default, one started on this machine), pushed to the shared git
and DVC remotes, pulled back by the head. `python -m sweep --help`; docs/sweeps.md."""
