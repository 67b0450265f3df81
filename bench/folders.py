"""Folders of pictures read by the pipeline: pictures per second and the peak memory of the
download stage (reading the folder) and of preprocess, on Fashion-MNIST written out as 70,000
PNG files and on 100,000 generated 64x64 colour pictures; and Fashion-MNIST's test accuracy
when read from its PNG folder against from its IDX files, with the same recipe (the MLP's of
docs/pipeline.md).

    python -m bench.folders [--fashion /usr/share/datasets/fashion-mnist] [--quick]

Memory is the peak of the stage's whole process tree (its decode workers included), sampled
every 10 ms as the sum of their proportional set sizes (tests/serving.py's PeakMemory: pages
the forked workers share with the stage count once). Against the decoded arrays (the goal:
about twice those) goes what the stage holds beyond its fixed cost: its peak less the peak of
the same stage on 300 pictures of the same kind (the interpreters, their modules, the workers).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.trainers import RECIPES
from tests.conftest import REPO, read_yaml, tiny_params, write_yaml
from tests.folders import SHAPES, shape_picture
from tests.readings import idx
from tests.serving import PeakMemory

PICTURES = {"fashion_png": 70_000, "colour": 100_000}
QUICK = 10_000  # pictures of each in a quick run, which trains nothing
FIXED_COST = 300  # pictures of the run that measures a stage's fixed cost
FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_MIRROR", "/usr/share/datasets/fashion-mnist"))
GOAL_SECONDS = 30  # Fashion-MNIST's PNGs through download and preprocess
GOAL_MEMORY = 2  # a stage's peak beyond its fixed cost, in decoded arrays
GOAL_POINTS = 0.3  # PNG against IDX, test accuracy in percentage points
NAMES = {"fashion_png": "Fashion-MNIST, 28x28 grey PNG files",
         "colour": "generated 64x64 colour pictures, PNG and JPEG"}


def write_fashion_pngs(mirror, root, count=70_000):
    """The first `count` of Fashion-MNIST's 70,000 pictures, six in seven from its training
    files and one from its test files, as root/train/<class>/<n>.png and
    root/test/<class>/<n>.png."""
    names = read_yaml(REPO / "datasets/fashion-mnist/dataset.yaml")["classes"]
    for split, prefix, share in (("train", "train", count * 6 // 7), ("test", "t10k", count // 7)):
        pictures = idx(mirror / f"{prefix}-images-idx3-ubyte.gz")[:share]
        labels = idx(mirror / f"{prefix}-labels-idx1-ubyte.gz")[:share]
        for n, (picture, label) in enumerate(zip(pictures, labels)):
            folder = root / split / names[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(folder / f"{n:05d}.png")


def write_colour_pictures(root, count, side=64):
    """`count` colour pictures of three shapes, `side` x `side`, as PNG and JPEG by turns."""
    rng = np.random.default_rng(0)
    for n in range(count):
        shape = SHAPES[n % 3]
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        picture = shape_picture(shape, rng, (side, side))
        picture.save(folder / f"{n:06d}{'.png' if n % 2 else '.jpg'}", quality=90)


def stage_folder(folder, dataset, datasets=REPO / "datasets", **data):
    """A folder to run the stages in, as DVC does, on `datasets`/<dataset>, with the repository's
    params but for `data` and the MLP's recipe for Fashion-MNIST (docs/pipeline.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    for code, target in (("stages", REPO / "stages"), ("app", REPO / "app"),
                         ("datasets", datasets)):
        (folder / code).symlink_to(target, target_is_directory=True)
    params = tiny_params(data={"dataset": dataset, **data})
    params["train"]["mlp"].update({**read_yaml(REPO / "params.yaml")["train"]["mlp"],
                                   **RECIPES["fashion-mnist"]["mlp"]})
    write_yaml(folder / "params.yaml", params)
    return folder


def measured(stage, cwd, env=None):
    """Run `python -m stages.<stage>` in `cwd`: its wall time and the peak PSS of its whole
    process tree, in MB."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=cwd,
                               env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    with PeakMemory(process.pid) as memory:
        _, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"stages.{stage} failed:\n{err[-3000:]}")
    return {"wall_s": time.monotonic() - started, "peak_mb": memory.pss}


def read_speed(kind, count, tmp, fashion):
    """`count` pictures of `kind` written as a folder of tmp/datasets, then download (the
    folder read) and preprocess run on it: (the stage folder, their times and peaks)."""
    name = f"{kind}-{count}"
    if kind == "colour":
        write_colour_pictures(tmp / "datasets" / name, count)
    else:
        write_fashion_pngs(fashion, tmp / "datasets" / name, count)
    folder = stage_folder(tmp / name, name, tmp / "datasets",
                          **({"image_size": 64} if kind == "colour" else {}))
    download = measured("download", folder)
    with np.load(folder / "data/raw.npz") as raw:
        arrays_mb = (raw["x_train"].nbytes + raw["x_test"].nbytes) / 2**20
    preprocess = measured("preprocess", folder)
    return folder, {"pictures": count, "arrays_mb": arrays_mb,
                    "download_s": download["wall_s"], "download_peak_mb": download["peak_mb"],
                    "preprocess_s": preprocess["wall_s"],
                    "preprocess_peak_mb": preprocess["peak_mb"]}


def accuracy(cwd, env=None):
    for stage in ("train", "evaluate"):
        measured(stage, cwd, env)
    return json.loads((cwd / "metrics/test.json").read_text())["test_accuracy"]


def measure(fashion, quick=False):
    """{kind: figures} for the colour pictures and (with the folder `fashion` of Fashion-MNIST's
    IDX files) its PNGs, and {"fashion_accuracy": ...} unless `quick`."""
    results = {"quick": quick}
    with tempfile.TemporaryDirectory(prefix="bench-folders-") as tmp:
        tmp = Path(tmp)
        (tmp / "datasets").mkdir()
        for entry in (REPO / "datasets").iterdir():  # the catalogue, beside the folders
            (tmp / "datasets" / entry.name).symlink_to(entry, target_is_directory=True)
        folders = {}
        for kind in ("colour", "fashion_png") if fashion and fashion.is_dir() else ("colour",):
            _, fixed = read_speed(kind, FIXED_COST, tmp, fashion)
            folders[kind], results[kind] = read_speed(kind, QUICK if quick else PICTURES[kind],
                                                      tmp, fashion)
            results[kind].update(fixed_download_mb=fixed["download_peak_mb"],
                                 fixed_preprocess_mb=fixed["preprocess_peak_mb"])
        shutil.rmtree(folders["colour"] / "data")  # 2.3 GB of colour arrays on disk: gone
        if "fashion_png" in results and not quick:
            from_idx = stage_folder(tmp / "idx", "fashion-mnist")
            env = {"FASHION_MNIST_MIRROR": str(fashion)}
            for stage in ("download", "preprocess"):
                measured(stage, from_idx, env)
            results["fashion_accuracy"] = {"from_png": accuracy(folders["fashion_png"]),
                                           "from_idx": accuracy(from_idx)}
    return results


def beyond(figures, stage):
    """A stage's peak beyond its fixed cost, in decoded arrays."""
    return ((figures[f"{stage}_peak_mb"] - figures[f"fixed_{stage}_mb"])
            / figures["arrays_mb"])


def table(results):
    lines = [
        "## Folders of pictures: download and preprocess",
        "",
        "Each folder read by `python -m stages.download` (its decode workers, one per core) and "
        "split by `python -m stages.preprocess`, each a process of its own as DVC runs them. "
        "Memory: the peak of the stage's process tree, the sum of their PSS sampled every "
        f"10 ms; beyond the fixed cost: less the same stage's peak on {FIXED_COST} pictures of "
        "the same kind, in decoded arrays (uint8, N x H x W x C): the goal is about "
        f"{GOAL_MEMORY}×, and its verdict below holds it to {GOAL_MEMORY:.1f}×."
        + (f" **A quick run: {QUICK:,} pictures of each.**" if results["quick"] else ""),
        "",
        "| pictures | how many | arrays (MB) | download (s) | pictures/s | peak (MB) | beyond "
        "fixed cost | preprocess (s) | pictures/s | peak (MB) | beyond fixed cost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, name in NAMES.items():
        if kind not in results:
            lines.append(f"| {name} | not measured: no Fashion-MNIST (FASHION_MNIST_MIRROR) |")
            continue
        r = results[kind]
        lines.append(
            f"| {name} | {r['pictures']:,} | {r['arrays_mb']:.0f} | {r['download_s']:.1f} | "
            f"{r['pictures'] / r['download_s']:,.0f} | {r['download_peak_mb']:.0f} | "
            f"{beyond(r, 'download'):.2f}× | {r['preprocess_s']:.1f} | "
            f"{r['pictures'] / r['preprocess_s']:,.0f} | {r['preprocess_peak_mb']:.0f} | "
            f"{beyond(r, 'preprocess'):.2f}× |")
    if "fashion_accuracy" in results:
        a = results["fashion_accuracy"]
        recipe = ", ".join(f"`{k}={v}`" for k, v in RECIPES["fashion-mnist"]["mlp"].items())
        lines += [
            "",
            f"Fashion-MNIST's test accuracy, the MLP's recipe of docs/pipeline.md ({recipe}) "
            "trained and evaluated by the stages on either: from its IDX files (the catalogue) "
            f"{a['from_idx']:.2%}, from its PNG folder {a['from_png']:.2%}.",
        ]
    return lines


def goals(results):
    """(goal, measured, met) for the time, memory and accuracy goals of folders; the time and
    accuracy goals only on the whole datasets (not in a quick run)."""
    rows = []
    png = results.get("fashion_png")
    if png and not results["quick"]:
        total = png["download_s"] + png["preprocess_s"]
        rows.append((f"Fashion-MNIST as {png['pictures']:,} PNG files through download and "
                     f"preprocess in < {GOAL_SECONDS} s",
                     f"{png['download_s']:.1f} s + {png['preprocess_s']:.1f} s = {total:.1f} s",
                     total < GOAL_SECONDS))
    for kind, name in NAMES.items():
        if kind in results:
            r = results[kind]
            worst = max(beyond(r, "download"), beyond(r, "preprocess"))
            rows.append((f"{name}: download's and preprocess' peak memory beyond their fixed "
                         f"cost within about {GOAL_MEMORY}× the decoded arrays",
                         f"download {beyond(r, 'download'):.2f}×, preprocess "
                         f"{beyond(r, 'preprocess'):.2f}× of {r['arrays_mb']:.0f} MB",
                         worst <= GOAL_MEMORY))
    if "fashion_accuracy" in results:
        a = results["fashion_accuracy"]
        points = abs(a["from_png"] - a["from_idx"]) * 100
        rows.append((f"Fashion-MNIST's test accuracy from PNG files within {GOAL_POINTS} point "
                     "of from its IDX files (the same recipe)",
                     f"{a['from_png']:.2%} against {a['from_idx']:.2%}: {points:.2f} point",
                     points <= GOAL_POINTS))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.folders",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", type=Path, default=FASHION_MNIST, help="a folder of "
                        f"Fashion-MNIST's IDX files (default: $FASHION_MNIST_MIRROR or "
                        f"{FASHION_MNIST})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} pictures of each, no "
                        "training: a look at the speed alone")
    args = parser.parse_args(argv)
    results = measure(args.fashion, args.quick)
    print("\n".join(table(results) + [""] + [f"- {goal}: {measured} ({'met' if met else 'missed'})"
                                            for goal, measured, met in goals(results)]))
    return results


if __name__ == "__main__":
    main()
