"""The benchmark: training speed against PyTorch and scikit-learn, time to 98 %, and the
pipeline's wall times and memory, in one run. Writes bench/results.md and prints it.

    pip install -r bench/requirements.txt     # into the project's .venv
    MNIST_MIRROR=../shared/mnist python -m bench

With MNIST_MIRROR the pipeline runs on real MNIST; without it, on random data of MNIST's shapes
(timings hold, accuracies mean nothing). Nothing here is part of `make test`: timings belong in
a benchmark that a person reads, not in tests that fail on a busy machine.
"""

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from importlib import metadata
from pathlib import Path

from bench import pipeline
from bench.trainers import TRAINERS
from stages import params

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.md"
log = logging.getLogger("bench")
TARGET = 0.98
# The goals this benchmark checks, and their limits.
GOALS = {
    "P1": "one epoch of the default model takes no longer than a PyTorch eager loop (ratio <= 1.0)",
    "P2": "the default params reach >= 98.0 % test accuracy in <= 10 s of training",
    "P3": "full `dvc repro` <= 30 s, no-op <= 2 s; download and preprocess <= 2 s each "
          "without TensorFlow",
    "P5": "peak RSS of the train stage <= 1.5 GB",
}


def run_trainer(name, data_dir, threads, epochs):
    cmd = [sys.executable, "-m", "bench.trainers", name, str(data_dir), "--threads", str(threads)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    log.info("training with %s ...", name)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def summarise(run):
    """Median epoch (the first, which compiles or warms up, left out), and time to TARGET."""
    seconds, scores = run["epoch_seconds"], run["test_accuracy"]
    elapsed, to_target = 0.0, None
    for epoch, (s, score) in enumerate(zip(seconds, scores), start=1):
        elapsed += s
        if score >= TARGET and to_target is None:
            to_target = (elapsed, epoch)
    return {"median_epoch_s": statistics.median(seconds[1:]), "epochs": len(seconds),
            "final_accuracy": scores[-1], "train_s": sum(seconds), "to_target": to_target}


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(*packages):
    """The installed version of the first of `packages` that is installed."""
    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return "not installed"


def verdict(ok, short_by=""):
    return "**met**" if ok else f"**missed**{': ' + short_by if short_by else ''}"


def training_table(trainers, threads, batch_size):
    torch = trainers["torch"]
    lines = [
        f"## Training: default model, batch {batch_size}, {threads} thread"
        f"{'s' if threads > 1 else ''} each",
        "",
        "Median epoch of all but the first (which compiles or warms up). Test accuracy is scored "
        "after every epoch, outside the timed part; time to 98 % adds up the epochs up to the "
        "first one that reaches it.",
        "",
        "| trainer | median epoch (s) | vs PyTorch | epochs | training (s) | final test accuracy "
        "| time to 98 % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_, label, _) in TRAINERS.items():
        t = trainers[name]
        reached = (f"{t['to_target'][0]:.1f} s (epoch {t['to_target'][1]})" if t["to_target"]
                   else f"not in {t['epochs']} epochs")
        lines.append(f"| {label} | {t['median_epoch_s']:.3f} | "
                     f"{t['median_epoch_s'] / torch['median_epoch_s']:.2f}× | {t['epochs']} | "
                     f"{t['train_s']:.1f} | {t['final_accuracy']:.2%} | {reached} |")
    lines += [
        "",
        "Each runs the project's recipe as far as its library allows: Adam with warm-up and "
        "cosine decay, dropout and the one-pixel batch shift for the project and PyTorch; "
        "`model.fit` without the shift; scikit-learn with Adam at a constant rate and no dropout. "
        "The project's and `model.fit`'s epochs also score the validation split; the others' "
        "do not.",
    ]
    return lines


def pipeline_table(stages_run):
    lines = [
        "## Pipeline: a fresh copy of the repository, data from the mirror",
        "",
        "| step | wall (s) | peak RSS (MB) | imports TensorFlow |",
        "|---|---:|---:|---|",
    ]
    for name, s in stages_run["stages"].items():
        lines.append(f"| `python -m stages.{name}` | {s['seconds']:.1f} | "
                     f"{s['peak_rss_mb']:.0f} | {'yes' if s['imports_tensorflow'] else 'no'} |")
    lines += [f"| `dvc repro --force`, clean copy: every stage | "
              f"{stages_run['repro_full_s']:.1f} | | |",
              f"| `dvc repro`, nothing to do | {stages_run['repro_noop_s']:.1f} | | |"]
    return lines


def goals_table(real_data, trainers, stages_run):
    project, torch, st = trainers["project"], trainers["torch"], stages_run["stages"]
    ratio = project["median_epoch_s"] / torch["median_epoch_s"]
    p2_time = project["to_target"][0] if project["to_target"] else None
    p2_ok = p2_time is not None and p2_time <= 10
    data_stages_ok = all(st[n]["seconds"] <= 2 and not st[n]["imports_tensorflow"]
                         for n in ("download", "preprocess"))
    p3_ok = (stages_run["repro_full_s"] <= 30 and stages_run["repro_noop_s"] <= 2
             and data_stages_ok)
    train_rss_gb = st["train"]["peak_rss_mb"] / 1024
    return [
        "## Goals",
        "",
        "| goal | measured | |",
        "|---|---|---|",
        f"| P1: {GOALS['P1']} | {project['median_epoch_s']:.3f} s vs "
        f"{torch['median_epoch_s']:.3f} s: ratio {ratio:.2f} | "
        f"{verdict(ratio <= 1.0, f'{ratio - 1:.0%} slower')} |",
        f"| P2: {GOALS['P2']} | "
        + (f"98 % after {p2_time:.1f} s (epoch {project['to_target'][1]}); the whole "
           f"{project['epochs']}-epoch run: {project['train_s']:.1f} s, "
           f"{project['final_accuracy']:.2%}" if p2_time is not None else "98 % not reached")
        + f" | {verdict(p2_ok) if real_data else verdict(False, 'needs real MNIST')} |",
        f"| P3: {GOALS['P3']} | full {stages_run['repro_full_s']:.1f} s, no-op "
        f"{stages_run['repro_noop_s']:.1f} s, download {st['download']['seconds']:.1f} s, "
        f"preprocess {st['preprocess']['seconds']:.1f} s | {verdict(p3_ok)} |",
        f"| P5: {GOALS['P5']} | {train_rss_gb:.2f} GB | {verdict(train_rss_gb <= 1.5)} |",
    ]


def report(real_data, threads, batch_size, trainers, stages_run):
    """The markdown page: the machine, then training, pipeline and goals tables."""
    header = [
        "# Benchmark results",
        "",
        f"Measured {date.today().isoformat()} by `python -m bench` on {cpu_name()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, TensorFlow "
        f"{version('tensorflow', 'tensorflow-cpu')}, PyTorch {version('torch')}, scikit-learn "
        f"{version('scikit-learn')}. Data: "
        + ("real MNIST from `MNIST_MIRROR`." if real_data else
           "**random data of MNIST's shapes** (no `MNIST_MIRROR`): accuracies mean nothing."),
    ]
    sections = [header, training_table(trainers, threads, batch_size),
                pipeline_table(stages_run), goals_table(real_data, trainers, stages_run)]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def main():
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    parser.add_argument("--threads", type=int, help="threads for every trainer (default: "
                        "params.yaml's train.threads, or all cores where that is 0)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    train_cfg = params.load("train", REPO / "params.yaml")
    threads = args.threads or train_cfg["threads"] or os.cpu_count()
    mirror = os.environ.get("MNIST_MIRROR")
    real_data = bool(mirror)
    if mirror and "://" not in mirror:
        mirror = str(Path(mirror).resolve())  # the stages run in a temporary directory
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        pipeline.copy_repo(repo)
        if not mirror:
            mirror = Path(tmp) / "random-mirror"
            mirror.mkdir()
            pipeline.use_random_data(repo, mirror)
        log.info("dvc repro and each stage in a fresh copy ...")
        stages_run = pipeline.measure(repo, pipeline.pipeline_env(mirror))
        data_dir = repo / "data" / "processed"
        trainers = {name: summarise(run_trainer(name, data_dir, threads, epochs))
                    for name, (_, _, epochs) in TRAINERS.items()}

    text = report(real_data, threads, train_cfg["batch_size"], trainers, stages_run)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
