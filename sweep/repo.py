"""The user's repository, as the head sees it: the baseline commit and where workers find it,
the DVC remote they share, and at the end the trials pulled back as experiments with their
metrics. git and dvc run as the user runs them; dvc.api reads the experiments."""

import logging
import subprocess
import tempfile
from pathlib import Path

import dvc.api

from sweep import SweepError
from sweep.pipeline import TEST_METRIC
from sweep.trial import WORK_DIR_NAME, Setup, command_name, error_line

log = logging.getLogger("sweep")


def run(cwd: Path | str, *args: str) -> str:
    """stdout of a git or dvc command; SweepError with the line that says why, if it fails."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SweepError(f"{command_name(args)}: {error_line(result.stderr or result.stdout)}")
    return result.stdout


def baseline_on_remote(root: Path, git_remote: str | None, local: bool) -> tuple[str, str]:
    """(HEAD, the URL workers clone it from and push to): git_remote's (a name or a URL); if
    None, `origin`'s on a cluster, and the repository itself on this machine's own cluster."""
    baseline = run(root, "git", "rev-parse", "HEAD").strip()
    git_url = str(root)
    if git_remote or not local:
        git_url = remote_url(root, git_remote or "origin")
        check_pushed(root, baseline, git_url, git_remote or "origin")
    if run(root, "git", "status", "--porcelain", "--untracked-files=no").strip():
        log.warning("uncommitted changes are not part of the sweep: every trial starts from "
                    "commit %s", baseline[:7])
    return baseline, git_url


def remote_url(root: Path, remote: str) -> str:
    """The URL of git remote `remote` (a name or a URL); a local path made absolute."""
    url = run(root, "git", "ls-remote", "--get-url", remote).strip()  # a URL is its own
    if "://" in url or ":" in url.split("/", 1)[0] or Path(url).is_absolute():
        return url
    if not (root / url).exists():
        raise SweepError(f"no git remote {remote!r} for the workers to clone: add it (git "
                         "remote add NAME URL) or give --git-remote NAME|URL")
    return str((root / url).resolve())


def check_pushed(root: Path, baseline: str, git_url: str, remote: str) -> None:
    """Workers clone the git remote: the baseline must be there, in some branch or tag."""
    tips = [line.split()[0] for line in
            run(root, "git", "ls-remote", "--heads", "--tags", git_url).splitlines()]
    # Tips this repository has never seen cannot contain the baseline (it is here).
    if run(root, "git", "rev-list", "--ignore-missing", "--max-count=1", baseline,
           "--not", *tips).strip():
        raise SweepError(f"commit {baseline[:7]} is not on {remote}, where the workers clone "
                         f"from: push it first (git push {remote} HEAD)")


def dvc_config(root: Path, local: bool) -> str:
    """The .dvc/config.local of every trial's clone, written by DVC: the default DVC remote by
    its absolute URL, and the cache the trials share, linked from (its data is only read): this
    repository's on this machine's cluster; else each worker's, beside its clones (../../cache
    from a clone, which DVC keeps relative, writing it from a folder laid out as a worker's)."""
    config = dict(line.split("=", 1) for line in  # local paths made absolute by DVC
                  run(root, "dvc", "config", "--list").splitlines() if "=" in line)
    name = config.get("core.remote")
    if not config.get(f"remote.{name}.url"):
        raise SweepError("no default DVC remote: the trials share their data and models "
                         "through one (dvc remote add -d NAME URL)")
    cache = run(root, "dvc", "cache", "dir").strip() if local else "../../cache"
    with tempfile.TemporaryDirectory(prefix="sweep-") as work_dir:
        clone = Path(work_dir, WORK_DIR_NAME, "clones", "config")
        (clone / ".dvc").mkdir(parents=True)  # a DVC repository, to `dvc config --local`
        run(clone, "dvc", "remote", "add", "--local", "--default", name,
            config[f"remote.{name}.url"])
        run(clone, "dvc", "cache", "dir", "--local", cache)
        run(clone, "dvc", "config", "--local", "cache.type", "reflink,hardlink,copy")
        return (clone / ".dvc" / "config.local").read_text()


def check_names_free(root: Path, baseline: str, git_url: str, names: list[str]) -> None:
    """A sweep never replaces anyone's results: none of `names` may be an experiment of the
    baseline already, here or on the git remote."""
    listed = [name for where in dict.fromkeys([str(root), git_url])
              for name in run(root, "dvc", "exp", "list", where, "--rev", baseline,
                              "--name-only").split()]
    if taken := [name for name in names if name in listed]:
        raise SweepError(f"{', '.join(taken)} already exist for commit {baseline[:7]}: "
                         "choose another --name")


def pull(root: Path, setup: Setup, names: list[str]) -> dict[str, float | None]:
    """`dvc exp pull` of the trials (their refs from the git remote, their data from the DVC
    remote); {name: test metric}."""
    run(root, "dvc", "exp", "pull", setup.git_url, *names)
    return metric_of(dvc.api.exp_show(repo=str(root), revs=setup.baseline), names)


def metric_of(rows: list[dict], names: list[str], metric: tuple[str, str] = TEST_METRIC
              ) -> dict[str, float | None]:
    """{name: value or None} of experiments `names` in rows of dvc.api.exp_show, where the
    metric's column is its key, or "file:key" if another file has that key too."""
    path, key = metric
    values = {row["Experiment"]: row.get(f"{path}:{key}", row.get(key)) for row in rows}
    return {name: values.get(name) for name in names}
