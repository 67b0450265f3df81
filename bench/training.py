"""Training speed: every trainer of bench/trainers.py, at each thread count, one process each;
then each trainer compared at its own best thread count."""

import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

from bench.trainers import TRAINERS

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"mlp": 0.98, "cnn": 0.995}  # test accuracy that counts as "trained", per family
log = logging.getLogger("bench")


def run_trainer(name, family, data_dir, threads, epochs=None):
    cmd = [sys.executable, "-m", "bench.trainers", name, family, str(data_dir),
           "--threads", str(threads)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    log.info("training %s with %s, %d thread%s ...", family, name, threads,
             "s" if threads > 1 else "")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} ({family}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def summarise(run, target):
    """Median epoch (the first, which compiles or warms up, left out unless it is the only
    one), and the time to `target`: the epochs added up to the first that reaches it."""
    seconds, scores = run["epoch_seconds"], run["test_accuracy"]
    elapsed, to_target = 0.0, None
    for epoch, (s, score) in enumerate(zip(seconds, scores), start=1):
        elapsed += s
        if score >= target and to_target is None:
            to_target = (elapsed, epoch)
    return {"median_epoch_s": statistics.median(seconds[1:] or seconds), "epochs": len(seconds),
            "final_accuracy": scores[-1], "train_s": sum(seconds), "to_target": to_target,
            "threads": run["threads"]}


def best_of_threads(summaries):
    """The summary with the shortest median epoch, of one trainer's runs at several thread
    counts (the fewer threads on a tie: they leave the rest of the machine free)."""
    return min(summaries, key=lambda s: (s["median_epoch_s"], s["threads"]))


def measure(families, data_dir, threads, epochs=None):
    """{family: {trainer: [summary per thread count]}}, for every trainer of each family."""
    results = {}
    for family in families:
        results[family] = {
            name: [summarise(run_trainer(name, family, data_dir, t, epochs), TARGETS[family])
                   for t in threads]
            for name, trainer in TRAINERS.items() if family in trainer.families}
    return results


def affine_parity(family, data_dir):
    """bench.torch_twin's check that torch's affine augmentation is TensorFlow's."""
    result = subprocess.run([sys.executable, "-m", "bench.torch_twin", str(data_dir),
                             "--family", family], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the affine check failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def ratio_to_torch(runs):
    """{trainer: its best median epoch / PyTorch's best}: < 1 is faster than PyTorch."""
    torch = best_of_threads(runs["torch"])["median_epoch_s"]
    return {name: best_of_threads(s)["median_epoch_s"] / torch for name, s in runs.items()}


def reached(summary, target):
    if summary["to_target"] is None:
        return f"not in {summary['epochs']} epoch{'s' if summary['epochs'] > 1 else ''}"
    return f"{summary['to_target'][0]:.1f} s (epoch {summary['to_target'][1]})"


def table(family, runs, threads, recipe, parity=None):
    target = TARGETS[family]
    by_threads = " | ".join(f"{t} thread{'s' if t > 1 else ''} (s)" for t in threads)
    lines = [
        f"## Training: {family.upper()}, batch {recipe['batch_size']}, augment "
        f"`{recipe['augment']}`",
        "",
        f"Median epoch of all but the first (which compiles or warms up) at each thread count; "
        f"each trainer is then compared at its own best. Test accuracy is scored after every "
        f"epoch, outside the timed part; time to {target:.1%} adds up the epochs up to the first "
        f"one that reaches it. Epochs, training time, accuracy and time to {target:.1%} are of "
        f"the best thread count's run.",
        "",
        f"| trainer | {by_threads} | best | vs PyTorch | epochs | training (s) "
        f"| final test accuracy | time to {target:.1%} |",
        "|---|" + "---:|" * (len(threads) + 6),
    ]
    ratios = ratio_to_torch(runs)
    for name, summaries in runs.items():
        best = best_of_threads(summaries)
        per_thread = " | ".join(f"{s['median_epoch_s']:.3f}" for s in summaries)
        lines.append(f"| {TRAINERS[name].label} | {per_thread} | {best['threads']} | "
                     f"{ratios[name]:.2f}× | {best['epochs']} | {best['train_s']:.1f} | "
                     f"{best['final_accuracy']:.2%} | {reached(best, target)} |")
    lines += [
        "",
        "The project and PyTorch run the same recipe: the same layers and parameter count, Adam "
        "with warm-up and cosine decay, dropout, the same batches and augmentation (`shift`: one "
        "whole-pixel move per batch; `affine`: one move, turn and scaling per image, drawn by "
        "`stages.train.affine_transforms` from the same seed, applied by TensorFlow's "
        "ImageProjectiveTransformV3 and torch's `affine_grid` + `grid_sample`), and both score "
        "the validation split within each epoch. `model.fit`: no augmentation, validation within "
        "the epoch, at most 4 epochs. scikit-learn: Adam at a constant 0.001, no dropout, no "
        "augmentation, no validation.",
    ]
    if parity:
        lines += ["", f"The two affine augmentations, checked on {parity['images']} test images "
                  f"under the same random transforms, differ by at most "
                  f"{parity['max_difference']:.1e} in pixel value (pixels span "
                  f"{parity['pixel_range']:.2f})."]
    return lines
