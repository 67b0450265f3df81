"""Which model the server serves: MODEL's file, or with --artifact a version from a DVC registry:
a git repository (REGISTRY, a path or URL) whose dvc.yaml declares it under `artifacts:` and
whose tags version it as GTO writes them (classifier@v1.2.0; classifier#prod#1 assigns a stage).
NAME@VERSION, NAME (its greatest version) or NAME#STAGE is read by GTO (`gto show`), and that
version fetched from the repository's DVC remote (`dvc artifacts get`). DVC, which brings GTO,
is not among the app's requirements: `pip install dvc` where a server serves from a registry.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.classifier import Classifier, load_classifier
from app.server.settings import Settings

FETCH_TIMEOUT_S = 600
BIN = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


class RegistryError(Exception):
    """The artifact cannot be fetched; the message says why, in one line."""


def run(command: list, spec: str) -> str:
    """The command's output; RegistryError with its last line of complaint if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"}, stdin=subprocess.DEVNULL)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RegistryError(f"{spec}: {lines[-1].removeprefix('ERROR: ').lstrip('❌ ')}")
    return done.stdout


def version_of(spec: str, registry: str) -> tuple[str, str]:
    """(name, version) that `spec` names in the registry now."""
    name, _, version = spec.partition("@")
    name, _, stage = name.partition("#")
    if not version:
        shortcut = spec if stage else f"{name}@greatest"
        version = next(iter(run([shutil.which("gto", path=BIN), "show", shortcut, "--version",
                                 "--repo", registry], spec).split()), "")
    if not version:
        raise RegistryError(f"{spec}: no version of {name} in {registry} (tag one: git tag -a "
                            f"{name}@v1.0.0)")
    return name, version


def fetch(spec: str, registry: str, folder: Path) -> Path:
    """`folder`/NAME@VERSION.onnx, the version that `spec` names, fetched unless it is there."""
    if importlib.util.find_spec("dvc") is None:
        raise RegistryError("--artifact fetches the model with DVC, which is not installed: "
                            "pip install dvc")
    name, version = version_of(spec, registry)
    target = folder / f"{name}@{version}.onnx"
    if not target.exists():
        partial = folder / f".{target.name}"
        run([sys.executable, "-m", "dvc", "artifacts", "get", registry, name, "--rev", version,
             "-o", str(partial), "--force"], spec)
        partial.rename(target)
    return target


def prepare(settings: Settings) -> Classifier:
    """What is to be served now, loaded and checked (ModelError, RegistryError): MODEL's file,
    or the version --artifact names, fetched into MODEL's folder, and MODEL (a link) pointed
    at it. For the start and for each reload."""
    if not settings.artifact:
        return load_classifier(settings.model)
    fetched = fetch(settings.artifact, settings.registry, settings.model.parent)
    classifier = load_classifier(fetched)
    link = settings.model.with_name(".next")
    link.unlink(missing_ok=True)
    link.symlink_to(fetched.name)
    os.replace(link, settings.model)  # at once: a worker loads one version or the other
    return classifier


def served_file(settings: Settings) -> Path:
    """The file the workers load: MODEL's, or the version MODEL links to."""
    return settings.model.resolve() if settings.artifact else settings.model
