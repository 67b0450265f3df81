"""The trials of a grid, made by DVC itself: `dvc exp run --queue -S ...` in a throwaway clone of
the baseline. So `a=1,2`, `range(1,4)`, `choice(mlp,cnn)` and `file.yaml:key=...` mean what they
mean there, a value DVC refuses stops the sweep before it starts, and each trial has the name
(NAME-1, NAME-2, ... with `-n NAME`) and the params files that the queue gives it."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import dvc.api
from ruamel.yaml import YAML

from sweep.pipeline import FAMILY_KEY, PARAMS_FILE, THREADS_KEY
from sweep.repo import run


@dataclass(frozen=True)
class Trial:
    name: str
    files: dict[str, str]      # {params file: its text}: params.yaml, and any other -S changes
    params: dict[str, object]  # every param of those files by dotted key ("train.seed")
    changed: str               # "train.seed=2 ...": what tells it from the other trials


def plan(root: Path, baseline: str, set_params: list[str], name: str | None) -> list[Trial]:
    """The trials `dvc exp run --queue [-n name] -S ...` queues on the baseline commit."""
    with tempfile.TemporaryDirectory(prefix="sweep-grid-") as clone:
        run(root, "git", "clone", "--quiet", "--no-checkout", str(root), clone)
        run(clone, "git", "checkout", "--quiet", "--detach", baseline)
        run(clone, "dvc", "exp", "run", "--queue", *(["-n", name] if name else []),
            *[part for arg in set_params for part in ("-S", arg)])
        queued = {row["Experiment"]: row["rev"] for row in dvc.api.exp_show(repo=clone)
                  if row["State"] == "Queued"}
        names = sorted(queued, key=lambda each: (len(each), each))  # NAME-1, ..., NAME-10
        files = [params_files(clone, baseline, queued[each]) for each in names]
        baseline_params = flat_params(params_files(clone, baseline, baseline))
    params = [flat_params(each) for each in files]
    changed = changed_params(params, baseline_params)
    return [Trial(*trial) for trial in zip(names, files, params, changed)]


def params_files(clone: str, baseline: str, rev: str) -> dict[str, str]:
    """{path: text} of params.yaml and of each file that commit `rev` changes from the baseline
    (DVC's own, under .dvc/, apart)."""
    changed = run(clone, "git", "diff", "--name-only", baseline, rev, "--", ".", ":!.dvc")
    return {path: run(clone, "git", "show", f"{rev}:{path}")
            for path in dict.fromkeys([PARAMS_FILE, *changed.splitlines()])}


def flat_params(files: dict[str, str]) -> dict[str, object]:
    """{"train.seed": 1, "other.yaml:key": 2, ...} of the files, read as DVC reads YAML."""
    flat = {}

    def add(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                add(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    for path, text in files.items():
        if path.endswith((".yaml", ".yml", ".json")):
            add(YAML(typ="safe", pure=True).load(text) or {},
                "" if path == PARAMS_FILE else f"{path}:")
    return flat


def changed_params(trials: list[dict], baseline: dict) -> list[str]:
    """Each trial's "key=value ..." of the params whose values differ between trials (of a
    single trial: from the baseline): what tells one from another in the table."""
    rows = trials if len(trials) > 1 else [baseline, *trials]
    keys = [key for key in dict.fromkeys(key for row in rows for key in row)
            if len({repr(row.get(key)) for row in rows}) > 1]
    return [" ".join(f"{key}={params.get(key)}" for key in keys) or "(none)"
            for params in trials]


def cpus(params: dict, node_cpus: int) -> int:
    """The CPUs a trial asks Ray for: the threads its recipe trains with; for 0 (TensorFlow's
    "all cores"), or more, the largest node's (more would wait for a node that never comes);
    1 where the params do not say."""
    threads = params.get(THREADS_KEY.format(family=params.get(FAMILY_KEY)))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        return 1
    return min(threads, node_cpus) if threads else node_cpus
