"""The user's repository, as the head sees it: the baseline commit and where workers find it,
the DVC remote they share, and at the end the trials pulled back as experiments with their
metrics. git and dvc run as the user runs them; DVC's Python API only reads its config."""

import json
import logging
import subprocess
from pathlib import Path

from sweep.pipeline import TEST_METRIC
from sweep.trial import Setup

log = logging.getLogger("sweep")

# Where each trial's output (git and DVC, every stage) is kept for the user: beside DVC's own
# queue logs, in a folder git ignores.
LOG_DIR = Path(".dvc/tmp/sweeps")


class RepoError(RuntimeError):
    """The repository is not ready for a sweep; the message says why and what to do."""


def run(root, *args, check=True):
    """stdout of a git or dvc command run in the repository; RepoError with the line that says
    why, if it fails."""
    result = subprocess.run(args, cwd=root, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RepoError(f"{' '.join(args[:2])}: {error_line(result.stderr or result.stdout)}")
    return result.stdout


def error_line(output):
    """The line of git's or DVC's output that says what went wrong: the first "fatal:" or
    "error:" line (git's hints follow it), else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()] or ["no output"]
    return next((line for line in lines
                 if line.lower().startswith(("fatal:", "error:"))), lines[-1])


def find_root(start="."):
    """The repository's root: git's top level, which must also hold DVC's .dvc."""
    result = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start,
                            capture_output=True, text=True)
    root = Path(result.stdout.strip()) if result.returncode == 0 else None
    if root is None or not (root / ".dvc").is_dir():
        raise RepoError(f"{Path(start).resolve()} is not in a git + DVC repository")
    return root


def setup(root, git_remote, local):
    """Setup of a sweep from HEAD. git_remote (a remote's name or a URL) is what workers clone
    and push to; None means `origin` on a cluster and, on this machine's own cluster, the
    repository itself (nothing to set up)."""
    from dvc.repo import Repo

    baseline = run(root, "git", "rev-parse", "HEAD").strip()
    if local and git_remote is None:
        git_url = str(root)
    else:
        git_url = remote_url(root, git_remote or "origin")
        check_pushed(root, baseline, git_url, git_remote or "origin")
    if run(root, "git", "status", "--porcelain", "--untracked-files=no").strip():
        log.warning("uncommitted changes are not part of the sweep: every trial starts from "
                    "commit %s", baseline[:7])
    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise RepoError("no default DVC remote: the trials share their data and models "
                            "through one (dvc remote add -d NAME URL)")
        # DVC's config gives a local remote's path made absolute, as every clone must see it.
        url = repo.config["remote"][name]["url"]
        cache_dir = repo.cache.local_cache_dir if local else None
    return Setup(git_url, baseline, name, url, cache_dir)


def remote_url(root, remote):
    """The URL of git remote `remote` (a name or a URL); a local path made absolute."""
    if remote in run(root, "git", "remote").split():
        url = run(root, "git", "remote", "get-url", remote).strip()
    elif "://" in remote or ":" in remote.split("/", 1)[0] or (root / remote).exists():
        url = remote  # a URL, user@host:path, or a path
    else:
        raise RepoError(f"no git remote {remote!r} for the workers to clone: add it (git remote "
                        "add NAME URL) or give --git-remote NAME|URL")
    if "://" in url or ":" in url.split("/", 1)[0] or Path(url).is_absolute():
        return url
    return str((root / url).resolve())  # a path, relative to the repository


def check_pushed(root, baseline, git_url, remote):
    """Workers clone the git remote: the baseline must be there, in some branch or tag."""
    tips = {line.split()[0] for line in
            run(root, "git", "ls-remote", "--heads", "--tags", git_url).splitlines()}
    # Tips this repository has never seen cannot contain the baseline (it is here).
    checked = subprocess.run(["git", "cat-file", "--batch-check"], cwd=root, text=True,
                             input="\n".join(tips) + "\n", capture_output=True).stdout
    known = [line.split()[0] for line in checked.splitlines() if not line.endswith("missing")]
    if known and not run(root, "git", "rev-list", "--max-count=1", baseline, "--not", *known):
        return  # no commit of the baseline's history is missing from the remote's branches
    raise RepoError(f"commit {baseline[:7]} is not on {remote}, where the workers clone from: "
                    f"push it first (git push {remote} HEAD)")


def baseline_files(root, baseline, paths):
    """{path: text} of the params files at the baseline commit (what the workers check out),
    leaving out those it does not have."""
    files = {}
    for path in paths:
        shown = subprocess.run(["git", "show", f"{baseline}:{path}"], cwd=root,
                               capture_output=True, text=True)
        if shown.returncode == 0:
            files[path] = shown.stdout
    return files


def check_name(root, setup, name):
    """A sweep's name must make valid git refs (refs/exps/.../NAME-1), as DVC requires."""
    from dvc.repo.experiments.refs import ExpRefInfo

    ref = str(ExpRefInfo(setup.baseline, f"{name}-1"))
    if subprocess.run(["git", "check-ref-format", ref], cwd=root).returncode != 0:
        raise RepoError(f"--name {name!r}: not a name git takes in a ref (see `git help "
                        "check-ref-format`)")


def taken_names(root, setup, names):
    """Those of `names` that are already experiments of the baseline, here or on the git
    remote: a sweep never replaces anyone's results."""
    from dvc.repo.experiments.refs import ExpRefInfo

    prefix = str(ExpRefInfo(setup.baseline))
    refs = run(root, "git", "for-each-ref", "--format=%(refname)", prefix).split()
    refs += [line.split()[1] for line in
             run(root, "git", "ls-remote", setup.git_url, f"{prefix}/*").splitlines()]
    existing = {ExpRefInfo.from_ref(ref).name for ref in refs}
    return [name for name in names if name in existing]


def pull(root, setup, names):
    """`dvc exp pull`: the trials' refs from the git remote, their data from the DVC remote."""
    run(root, "dvc", "exp", "pull", setup.git_url, *names)


def read_metrics(root, names):
    """{name: test metric} of the experiments `names`, from `dvc exp show --json`."""
    return metric_of(json.loads(run(root, "dvc", "exp", "show", "--json")), names)


def metric_of(shown, names, metric=TEST_METRIC):
    """{name: value or None} of experiments `names` in `dvc exp show --json`'s output."""
    path, key = metric
    values = dict.fromkeys(names)
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") in values:
                    metrics = (rev.get("data") or {}).get("metrics") or {}
                    values[rev["name"]] = ((metrics.get(path) or {}).get("data") or {}).get(key)
    return values


def save_log(root, outcome):
    """The trial's output, for the user to read: the path, relative to the root."""
    path = LOG_DIR / f"{outcome.name}.log"
    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    (root / path).write_text(outcome.log)
    return path
