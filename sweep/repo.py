"""The user's repository, as the head sees it: the baseline commit and where workers find it,
the DVC remote they share, and at the end the trials pulled back as experiments with their
metrics. git and dvc run as the user runs them; DVC's Python API (dvc.api) reads experiments."""

import logging
import subprocess
import tempfile
from pathlib import Path

from sweep import SweepError
from sweep.pipeline import TEST_METRIC
from sweep.trial import Setup, command_name, error_line

log = logging.getLogger("sweep")

# Where each trial's output (git and DVC, every stage) is kept for the user: beside DVC's own
# queue logs, in a folder git ignores.
LOG_DIR = Path(".dvc/tmp/sweeps")


def run(cwd: Path | str, *args: str) -> str:
    """stdout of a git or dvc command; SweepError with the line that says why, if it fails."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SweepError(f"{command_name(args)}: {error_line(result.stderr or result.stdout)}")
    return result.stdout


def find_root(start: str = ".") -> Path:
    """The repository's root: git's top level, which must also hold DVC's .dvc."""
    result = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start,
                            capture_output=True, text=True)
    root = Path(result.stdout.strip()) if result.returncode == 0 else None
    if root is None or not (root / ".dvc").is_dir():
        raise SweepError(f"{Path(start).resolve()} is not in a git + DVC repository")
    return root


def setup(root: Path, git_remote: str | None, local: bool) -> Setup:
    """Setup of a sweep from HEAD. git_remote (a remote's name or a URL) is what workers clone
    and push to; None means `origin` on a cluster and, on this machine's own cluster, the
    repository itself (nothing to set up)."""
    baseline = run(root, "git", "rev-parse", "HEAD").strip()
    if local and git_remote is None:
        git_url = str(root)
    else:
        git_url = remote_url(root, git_remote or "origin")
        check_pushed(root, baseline, git_url, git_remote or "origin")
    if run(root, "git", "status", "--porcelain", "--untracked-files=no").strip():
        log.warning("uncommitted changes are not part of the sweep: every trial starts from "
                    "commit %s", baseline[:7])
    return Setup(git_url, baseline, dvc_config(root, local))


def dvc_config(root: Path, local: bool) -> str:
    """The .dvc/config.local of every trial's clone, written by DVC once here: the default DVC
    remote by its absolute URL (a relative one would point somewhere else from every clone),
    and the cache the trials share, linked from rather than copied (its data is read, never
    written in place: DVC removes a stage's outputs before it runs it). On this machine's own
    cluster the cache is this repository's; on another, each worker's own, in its work folder
    beside its clones (trial.work_dir()): `../../cache` from a clone, which DVC keeps relative
    as it writes it from a clone laid out the same way, here."""
    # DVC gives a local remote's path made absolute, as every clone must see it.
    config = dict(line.split("=", 1) for line in
                  run(root, "dvc", "config", "--list").splitlines() if "=" in line)
    name = config.get("core.remote")
    if not name or not config.get(f"remote.{name}.url"):
        raise SweepError("no default DVC remote: the trials share their data and models "
                         "through one (dvc remote add -d NAME URL)")
    cache = run(root, "dvc", "cache", "dir").strip() if local else "../../cache"
    with tempfile.TemporaryDirectory(prefix="sweep-") as work_dir:
        clone = Path(work_dir, "clones", "config")
        clone.mkdir(parents=True)
        run(clone, "dvc", "init", "--no-scm", "--quiet")
        run(clone, "dvc", "remote", "add", "--local", "--default", name,
            config[f"remote.{name}.url"])
        run(clone, "dvc", "cache", "dir", "--local", cache)
        run(clone, "dvc", "config", "--local", "cache.type", "reflink,hardlink,copy")
        return (clone / ".dvc" / "config.local").read_text()


def remote_url(root: Path, remote: str) -> str:
    """The URL of git remote `remote` (a name or a URL); a local path made absolute."""
    if remote in run(root, "git", "remote").split():
        url = run(root, "git", "remote", "get-url", remote).strip()
    elif "://" in remote or ":" in remote.split("/", 1)[0] or (root / remote).exists():
        url = remote  # a URL, user@host:path, or a path
    else:
        raise SweepError(f"no git remote {remote!r} for the workers to clone: add it (git "
                         "remote add NAME URL) or give --git-remote NAME|URL")
    if "://" in url or ":" in url.split("/", 1)[0] or Path(url).is_absolute():
        return url
    return str((root / url).resolve())  # a path, relative to the repository


def check_pushed(root: Path, baseline: str, git_url: str, remote: str) -> None:
    """Workers clone the git remote: the baseline must be there, in some branch or tag."""
    tips = [line.split()[0] for line in
            run(root, "git", "ls-remote", "--heads", "--tags", git_url).splitlines()]
    # Tips this repository has never seen cannot contain the baseline (it is here).
    if run(root, "git", "rev-list", "--ignore-missing", "--max-count=1", baseline,
           "--not", *tips).strip():
        raise SweepError(f"commit {baseline[:7]} is not on {remote}, where the workers clone "
                         f"from: push it first (git push {remote} HEAD)")


def taken_names(root: Path, setup: Setup, names: list[str]) -> list[str]:
    """Those of `names` that are already experiments of the baseline, here or on the git
    remote: a sweep never replaces anyone's results."""
    listed = run(root, "dvc", "exp", "list", "--rev", setup.baseline, "--name-only").split()
    if setup.git_url != str(root):
        listed += run(root, "dvc", "exp", "list", setup.git_url, "--rev", setup.baseline,
                      "--name-only").split()
    return [name for name in names if name in listed]


def pull(root: Path, setup: Setup, names: list[str]) -> None:
    """`dvc exp pull`: the trials' refs from the git remote, their data from the DVC remote."""
    run(root, "dvc", "exp", "pull", setup.git_url, *names)


def read_metrics(root: Path, baseline: str, names: list[str]) -> dict[str, float | None]:
    """{name: test metric} of the experiments `names` of the baseline."""
    import dvc.api

    return metric_of(dvc.api.exp_show(repo=str(root), revs=baseline), names)


def metric_of(rows: list[dict], names: list[str], metric: tuple[str, str] = TEST_METRIC
              ) -> dict[str, float | None]:
    """{name: value or None} of experiments `names` in dvc.api.exp_show's rows, whose column is
    the metric's key, or "file:key" where another file has that key too."""
    path, key = metric
    values = {row["Experiment"]: row.get(f"{path}:{key}", row.get(key)) for row in rows}
    return {name: values.get(name) for name in names}


def save_log(root: Path, name: str, text: str) -> Path:
    """A trial's output, kept for the user to read: its path, relative to the root."""
    path = LOG_DIR / f"{name}.log"
    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
    return path
