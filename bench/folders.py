"""Folders of pictures read by the pipeline: pictures per second and the peak memory of the
download stage (reading the folder) and of preprocess, on Fashion-MNIST written out as 70,000
PNG files and on 100,000 generated 64x64 colour pictures; and Fashion-MNIST's test accuracy
when read from its PNG folder against from its IDX files, with the same recipe.

    python -m bench.folders [--fashion /usr/share/datasets/fashion-mnist] [--quick]

Memory is the peak of the stage's whole process tree (its decode workers included), sampled
every 50 ms, against the size of the arrays it holds (the goal: about twice those)."""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from tests.conftest import REPO, read_yaml, tiny_params, write_yaml
from tests.folders import SHAPES, shape_picture

FASHION_RECIPE = {"hidden_units": [256], "dropout": 0.3, "epochs": 40, "augment": "none"}


def idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_fashion_pngs(mirror: Path, root: Path) -> int:
    """Fashion-MNIST as root/train/<class>/<n>.png and root/test/<class>/<n>.png."""
    names = read_yaml(REPO / "datasets/fashion-mnist/dataset.yaml")["classes"]
    count = 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pictures = idx(mirror / f"{prefix}-images-idx3-ubyte.gz")
        labels = idx(mirror / f"{prefix}-labels-idx1-ubyte.gz")
        for n, (picture, label) in enumerate(zip(pictures, labels)):
            folder = root / split / names[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"{n:05d}.png")
            count += 1
    return count


def write_colour_pictures(root: Path, count: int, side: int = 64) -> int:
    """`count` colour pictures of three shapes, `side` x `side`, as PNG and JPEG by turns."""
    rng = np.random.default_rng(0)
    for n in range(count):
        shape = SHAPES[n % 3]
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        picture = shape_picture(shape, rng, (side, side))
        picture.save(folder / f"{n:06d}{'.png' if n % 2 else '.jpg'}", quality=90)
    return count


def stage_folder(folder: Path, dataset: str, **data: object) -> Path:
    """A folder to run the stages in, as DVC does, on datasets/<dataset>."""
    folder.mkdir(parents=True, exist_ok=True)
    for code in ("stages", "app", "datasets"):
        if not (folder / code).exists():
            (folder / code).symlink_to(REPO / code, target_is_directory=True)
    params = tiny_params(data={"dataset": dataset, **data})
    params["train"]["mlp"].update({**read_yaml(REPO / "params.yaml")["train"]["mlp"],
                                   **FASHION_RECIPE})
    write_yaml(folder / "params.yaml", params)
    return folder


def measured(stage: str, cwd: Path, env: dict | None = None) -> dict:
    """Run `python -m stages.<stage>` in `cwd`: its wall time and the peak RSS of its whole
    process tree, in MB."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=cwd,
                               env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    out, err = process.communicate()
    done.set()
    if process.returncode:
        raise RuntimeError(f"stages.{stage} failed:\n{err[-3000:]}")
    return {"wall_s": time.monotonic() - started, "peak_mb": peak[0] / 2**20, "log": err}


def read_speed(cwd: Path, pictures: int) -> dict:
    """download (the folder read) and preprocess on the dataset of `cwd`."""
    download = measured("download", cwd)
    with np.load(cwd / "data/raw.npz") as raw:
        arrays_mb = (raw["x_train"].nbytes + raw["x_test"].nbytes) / 2**20
    preprocess = measured("preprocess", cwd)
    return {"pictures": pictures, "arrays_mb": arrays_mb,
            "download_s": download["wall_s"], "download_peak_mb": download["peak_mb"],
            "pictures_per_s": pictures / download["wall_s"],
            "preprocess_s": preprocess["wall_s"], "preprocess_peak_mb": preprocess["peak_mb"]}


def accuracy(cwd: Path, env: dict | None = None) -> float:
    for stage in ("train", "evaluate"):
        measured(stage, cwd, env)
    return json.loads((cwd / "metrics/test.json").read_text())["test_accuracy"]


def main(argv: list | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", type=Path, default=Path(
        os.environ.get("FASHION_MNIST_MIRROR", "/usr/share/datasets/fashion-mnist")))
    parser.add_argument("--quick", action="store_true", help="10,000 colour pictures, no "
                        "training: a look at the speed alone")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-folders-") as tmp:
        tmp = Path(tmp)
        datasets = tmp / "datasets"
        datasets.mkdir()
        for entry in (REPO / "datasets").iterdir():
            (datasets / entry.name).symlink_to(entry, target_is_directory=True)
        count = write_colour_pictures(datasets / "colour", 10_000 if args.quick else 100_000)
        colour = stage_folder(tmp / "colour", "colour", image_size=64)
        (colour / "datasets").unlink()
        (colour / "datasets").symlink_to(datasets, target_is_directory=True)
        results["colour"] = read_speed(colour, count)
        shutil.rmtree(datasets / "colour")
        if args.fashion.is_dir():
            count = write_fashion_pngs(args.fashion, datasets / "fashion-png")
            png = stage_folder(tmp / "png", "fashion-png")
            (png / "datasets").unlink()
            (png / "datasets").symlink_to(datasets, target_is_directory=True)
            results["fashion_png"] = read_speed(png, count)
            if not args.quick:
                idx_folder = stage_folder(tmp / "idx", "fashion-mnist")
                env = {"FASHION_MNIST_MIRROR": str(args.fashion)}
                for stage in ("download", "preprocess"):
                    measured(stage, idx_folder, env)
                results["fashion_accuracy"] = {"from_png": accuracy(png),
                                               "from_idx": accuracy(idx_folder)}
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
