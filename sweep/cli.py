"""`python -m sweep -S 'train.seed=1,2,3' [--address HOST:PORT]`: a grid of DVC experiments,
each run in its own clone on a worker of a Ray cluster, then pulled back here.

    python -m sweep -S 'train.mlp.learning_rate=0.001,0.003' -S 'train.seed=range(1,4)'
    python -m sweep --address 10.0.0.5:6379 --name lr -S 'train.mlp.learning_rate=0.001,0.003'

The grid is DVC's (`dvc exp run --queue -S` syntax and order); the trials are named NAME-1,
NAME-2, ... as the queue names them; `dvc exp show` lists them afterwards and `dvc exp apply`
restores any of them, model included, from the DVC remote.
"""

import argparse
import logging
import os
import sys

from sweep import cluster, grid, repo, report

log = logging.getLogger("sweep")
# A random sweep name (DVC's own generator) that is already taken is drawn again, this often.
NAME_DRAWS = 5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m sweep", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("-S", "--set-param", action="append", default=[],
                        metavar="[FILE:]KEY=VALUES",
                        help="a param and its values, as `dvc exp run --queue -S` takes them")
    parser.add_argument("-n", "--name", help="the sweep's name: trials are NAME-1, NAME-2, ... "
                        "(default: a random one, as DVC draws)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="a Ray cluster's address (default: $RAY_ADDRESS; without either, "
                        "a cluster of this machine's cores, started for the sweep)")
    parser.add_argument("--git-remote", help="the git remote (name or URL) workers clone and "
                        "push to (default: origin on a cluster; this repository on this machine)")
    return parser.parse_args(argv)


def plan(root, args, setup):
    """The named trials, none of whose names exists yet for the baseline."""
    files = repo.baseline_files(root, setup.baseline, grid.params_files(args.set_param))
    for _ in range(NAME_DRAWS):
        name = args.name or random_name()
        repo.check_name(root, setup, name)
        trials = grid.trials(name, args.set_param, files)
        taken = repo.taken_names(root, setup, [t.name for t in trials])
        if not taken:
            return trials
        if args.name:
            raise repo.RepoError(f"{', '.join(taken)} already exist for commit "
                                 f"{setup.baseline[:7]}: choose another --name")
    raise repo.RepoError("every sweep name drawn was taken: give one with --name")


def random_name():
    from dvc.repo.experiments.utils import gen_random_name

    return gen_random_name()


def sweep(args):
    root = repo.find_root()
    setup = repo.setup(root, args.git_remote, local=not args.address)
    trials = plan(root, args, setup)
    changed = grid.changed_params(trials)
    where = f"the Ray cluster at {args.address}" if args.address else "this machine"
    log.info("%d trial%s of commit %s on %s: %s", len(trials), "s" * (len(trials) > 1),
             setup.baseline[:7], where, ", ".join(t.name for t in trials))

    def on_end(outcome):
        log_path = repo.save_log(root, outcome)
        (log.info if outcome.ok else log.error)("%s", report.ended(outcome, log_path))

    with cluster.connected(args.address):
        outcomes = cluster.run_trials(trials, setup, on_end)
    cluster.raise_if_stopping()  # told to stop as the last trial ended: nothing pulled
    done = [o.name for o in outcomes if o.ok]
    metrics = {}
    if done:
        repo.pull(root, setup, done)
        metrics = repo.read_metrics(root, done)
    print(report.table(changed, outcomes, metrics))
    return 0 if len(done) == len(trials) else 1


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # `kill` and a closed terminal stop the sweep as Ctrl-C does: its trials cancelled, their
    # clones removed, the local cluster stopped.
    cluster.take_stop_signals()
    try:
        sys.exit(sweep(args))
    except (repo.RepoError, grid.GridError, cluster.ClusterError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        # The trials that had ended are on the remotes: `dvc exp pull` brings them here.
        print("stopped: no trial is left running, and no clone", file=sys.stderr)
        sys.exit(130)
