"""The trials of a grid, expanded exactly as `dvc exp run --queue -S` expands it, by DVC's own
code: `a=1,2`, `range(1,4)`, `choice(mlp,cnn)` and `file.yaml:key=...` all mean what they mean
there, and trial k of sweep NAME is NAME-k, as the queue names it."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sweep.pipeline import FAMILY_KEY, PARAMS_FILE, THREADS_KEY


class GridError(ValueError):
    """A `-S` value DVC would refuse; the message says why, in one line."""


@dataclass(frozen=True)
class Trial:
    name: str
    overrides: dict[str, list[str]]  # {params file: ["train.seed=1", ...]}: what -S sets
    params: dict[str, dict]          # {params file: its content with the overrides applied}

    @property
    def set_args(self):
        """The trial's `-S` arguments for `dvc exp run`."""
        return [override if path == PARAMS_FILE else f"{path}:{override}"
                for path, overrides in self.overrides.items() for override in overrides]


def expand(set_params):
    """[{params file: [override, ...]}, ...], one per trial, in the order the queue gets them
    (the code of dvc.repo.experiments.run for --queue)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides
    from hydra.errors import OverrideParseException

    path_overrides = to_path_overrides(set_params)
    try:
        is_sweep = any(override.is_sweep_override()
                       for overrides in path_overrides.values()
                       for override in to_hydra_overrides(overrides))
        return get_hydra_sweeps(path_overrides) if is_sweep else [path_overrides]
    except (OverrideParseException, InvalidArgumentError) as error:
        raise GridError(f"-S: {one_line(error)}") from error


def params_files(set_params):
    """The params files a grid touches: params.yaml, and any other `-S file:key=...` names."""
    from dvc.utils.cli_parse import to_path_overrides

    return sorted({PARAMS_FILE, *to_path_overrides(set_params)})


def trials(sweep_name, set_params, baseline_files):
    """The trials of the grid, named and with their params: each params file of the baseline
    (`baseline_files`: {path: text}) with the trial's overrides applied by DVC's own code, so
    an override DVC would refuse (an unknown key, a bad value) stops the sweep before it starts."""
    return [Trial(f"{sweep_name}-{k}", overrides, apply(baseline_files, overrides))
            for k, overrides in enumerate(expand(set_params), start=1)]


def apply(baseline_files, overrides):
    """{path: params} of every file the overrides touch, and of params.yaml."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import LOADERS

    result = {}
    with tempfile.TemporaryDirectory(prefix="sweep-params-") as tmp:
        for path in {PARAMS_FILE, *overrides}:
            if path not in baseline_files:
                raise GridError(f"-S {path}:...: {path} is not in the baseline commit")
            copy = Path(tmp) / path
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(baseline_files[path])
            try:
                apply_overrides(copy, overrides.get(path, []))
            except InvalidArgumentError as error:
                raise GridError(f"-S {' '.join(overrides.get(path, []))}: "
                                f"{one_line(error.__cause__ or error)}") from error
            result[path] = LOADERS[copy.suffix](copy)
    return result


def one_line(error):
    """Hydra's messages run over several lines; a user reads them as one."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def dotted(params, key):
    """params["train"]["mlp"]["threads"] for "train.mlp.threads"; None where a level is missing."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def cpus(trial, node_cpus):
    """The CPUs a trial asks Ray for: the threads its recipe trains with. 0 (TensorFlow's "all
    cores") asks for the largest node's CPUs, so the trial has a machine to itself; a count over
    that is capped to it, or Ray would wait for a node that never comes. 1 where the params do
    not say."""
    params = trial.params[PARAMS_FILE]
    threads = dotted(params, THREADS_KEY.format(family=dotted(params, FAMILY_KEY)))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        return 1
    return min(threads, node_cpus) if threads else node_cpus


def changed_params(trials):
    """{trial name: "key=value ..."} of the overrides that differ between trials: what tells one
    from another in the table (what they all share is said once, by the command line)."""
    every = [trial.set_args for trial in trials]
    shared = set.intersection(*map(set, every)) if len(every) > 1 else set()
    return {trial.name: " ".join(a for a in args if a not in shared) or "(none)"
            for trial, args in zip(trials, every)}
