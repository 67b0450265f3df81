"""`python -m sweep -S 'train.seed=1,2,3' [--address HOST:PORT]`: a grid of DVC experiments,
each run in its own clone on a worker of a Ray cluster, then pulled back here.

    python -m sweep -S 'train.mlp.learning_rate=0.001,0.003' -S 'train.seed=range(1,4)'
    python -m sweep --address 10.0.0.5:6379 --name lr -S 'train.mlp.learning_rate=0.001,0.003'

The grid is `dvc exp run --queue -S`'s; `dvc exp show` lists the trials afterwards and
`dvc exp apply` restores any of them, model included."""

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path

from sweep import SweepError, cluster, grid, repo, report
from sweep.trial import Outcome, Setup

log = logging.getLogger("sweep")
LOG_DIR = Path(".dvc/tmp/sweeps")  # each trial's output, beside DVC's queue logs (git-ignored)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sweep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="[FILE:]K=V",
                        help="a param and its values, as `dvc exp run --queue -S` takes them")
    parser.add_argument("-n", "--name", help="trials NAME-1, NAME-2, ... (default: as DVC names)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="a Ray cluster (default: $RAY_ADDRESS, else one of this machine)")
    parser.add_argument("--git-remote", help="what workers clone and push to, a name or URL "
                        "(default: origin on a cluster; this repository on this machine)")
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace) -> int:
    """Plan, run and pull back the trials; print the table; the exit status."""
    if importlib.util.find_spec("ray") is None:
        raise SweepError("Ray is not installed: pip install -r requirements-sweep.txt")
    root = Path(repo.run(".", "git", "rev-parse", "--show-toplevel").strip())
    # The cheap checks first: git's, the cluster's address, then DVC's (its every start costs).
    baseline, git_url = repo.baseline_on_remote(root, args.git_remote, not args.address)
    if args.address:
        cluster.check_reachable(args.address)
    trials = grid.plan(root, baseline, args.set_param, args.name)
    repo.check_names_free(root, baseline, git_url, [t.name for t in trials])
    setup = Setup(git_url, baseline, repo.dvc_config(root, local=not args.address))
    log.info("%d trial%s of commit %s on %s: %s", len(trials), "s" * (len(trials) > 1),
             baseline[:7], f"the Ray cluster at {args.address}" if args.address
             else "this machine", ", ".join(t.name for t in trials))

    def on_end(outcome: Outcome) -> None:
        log_path = LOG_DIR / f"{outcome.name}.log"  # kept for the user
        (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
        (root / log_path).write_text(outcome.log)
        (log.info if outcome.ok else log.error)("%s", report.ended(outcome, str(log_path)))

    with cluster.connected(args.address):
        outcomes = cluster.run_trials(trials, setup, on_end)
    cluster.raise_if_stopping()  # told to stop as the last trial ended: nothing pulled
    done = [o.name for o in outcomes if o.ok]
    metrics = repo.pull(root, setup, done) if done else {}
    print(report.table({t.name: t.changed for t in trials}, outcomes, metrics))
    return 0 if len(done) == len(trials) else 1


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cluster.take_stop_signals()
    try:
        sys.exit(sweep(args))
    except SweepError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        # The trials that had ended are on the remotes: `dvc exp pull` brings them here.
        print("stopped: no trial is left running, and no clone", file=sys.stderr)
        sys.exit(130)
