"""Which model is served: MODEL's file, or with --artifact a version from a DVC registry, a git
repository (REGISTRY, a path or URL) whose dvc.yaml declares it under `artifacts:`, versioned
by GTO's tags (classifier@v1.2.0; classifier#prod#1 assigns a stage). GTO reads which version
NAME (the greatest), NAME#STAGE or NAME@VERSION is; `dvc artifacts get` fetches it from the
repository's DVC remote. DVC (and GTO with it) is not an app requirement: `pip install dvc`."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.classifier import Classifier, load_classifier
from app.server.settings import Settings

SCRIPTS = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


class RegistryError(Exception):
    """The artifact cannot be fetched; the message says why, in one line."""


def run(command: list, spec: str) -> str:
    """The command's output, or RegistryError with the last line it complained in."""
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"}, timeout=600)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RegistryError(f"{spec}: {why.removeprefix('ERROR: ').lstrip('❌ ')}")
    return done.stdout


def fetch(spec: str, registry: str, folder: Path) -> Path:
    """`folder`/NAME@VERSION.onnx: the version `spec` names now, fetched unless it is there."""
    if not importlib.util.find_spec("dvc"):
        raise RegistryError("--artifact fetches the model with DVC, which is not installed: "
                            "pip install dvc")
    name, _, version = spec.partition("@")
    name = name.partition("#")[0]
    if not version:
        shortcut = spec if "#" in spec else f"{spec}@greatest"
        version = next(iter(run([shutil.which("gto", path=SCRIPTS), "show", shortcut,
                                 "--version", "--repo", registry], spec).split()), None)
    if not version:
        raise RegistryError(f"{spec}: no version in {registry} (git tag -a {name}@v1.0.0)")
    target = folder / f"{name}@{version}.onnx"
    if not target.exists():
        run([sys.executable, "-m", "dvc", "artifacts", "get", registry, name, "--rev", version,
             "-o", str(folder / ".partial"), "--force"], spec)
        (folder / ".partial").rename(target)
    return target


def prepare(settings: Settings) -> Classifier:
    """The model to serve now, loaded and checked: MODEL's, or the version --artifact names,
    fetched, and MODEL (a link) then pointed at it. For the start and each reload."""
    if not settings.artifact:
        return load_classifier(settings.model)
    classifier = load_classifier(fetch(settings.artifact, settings.registry,
                                       settings.model.parent))
    link = settings.model.with_name(".link")
    link.unlink(missing_ok=True)
    link.symlink_to(classifier.path.name)
    link.replace(settings.model)  # at once: a worker loads one version or the other
    return classifier
