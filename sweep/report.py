"""What the head prints: a line as each trial ends, and the table at the end, best first."""

from sweep.pipeline import TEST_METRIC
from sweep.trial import Outcome

HEADER = ("trial", "changed params", "test accuracy", "training", "trial time")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def ended(outcome: Outcome, log_path: str) -> str:
    """One line for a trial that ended."""
    if outcome.ok:
        return (f"{outcome.name} done in {seconds(outcome.wall_s)} (training "
                f"{seconds(outcome.training_s)}) on node {outcome.node[:8]}")
    return f"{outcome.name} failed: {outcome.reason} (log: {log_path})"


def table(changed: dict[str, str], outcomes: list[Outcome],
          metrics: dict[str, float | None]) -> str:
    """The trials, best test metric first; failed ones last, with their reason.
    changed: {name: changed params}; metrics: {name: value or None}."""
    done = sorted((o for o in outcomes if o.ok),
                  key=lambda o: (metrics.get(o.name) is None, -(metrics.get(o.name) or 0)))
    rows = [HEADER, *[(o.name, changed[o.name],
                       "-" if metrics.get(o.name) is None else f"{metrics[o.name]:.4f}",
                       seconds(o.training_s), seconds(o.wall_s)) for o in done]]
    widths = [max(map(len, column)) for column in zip(*rows)]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines += [f"{o.name.ljust(widths[0])}  {changed[o.name].ljust(widths[1])}  failed: {o.reason}"
              for o in outcomes if not o.ok]
    if done and metrics.get(done[0].name) is not None:
        best = done[0].name
        lines += ["", f"best: {best} ({TEST_METRIC[1]} in {TEST_METRIC[0]}); `dvc exp show` "
                      f"lists every trial, `dvc exp apply {best}` restores its model"]
    return "\n".join(lines)
