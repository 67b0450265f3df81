"""Training speed: every trainer of bench/trainers.py, at each thread count, one process each;
then each trainer compared at its own best thread count. And the test accuracy each family's
recipe reaches, and when."""

import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

from bench.trainers import RECIPES, TRAINERS

REPO = Path(__file__).resolve().parent.parent
# Test accuracy that counts as "trained", per dataset and family: the goals of each recipe.
TARGETS = {"mnist": {"mlp": 0.98, "cnn": 0.995}, "fashion-mnist": {"cnn": 0.91}}
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


def measure(families, data_dir, threads, epochs=None, dataset="mnist", trainers=TRAINERS):
    """{family: {trainer: [summary per thread count]}}, for each of `trainers` that trains the
    family, on `dataset`'s data in `data_dir`."""
    results = {}
    for family in families:
        target = TARGETS[dataset][family]
        results[family] = {
            name: [summarise(run_trainer(name, family, data_dir, t, epochs), target)
                   for t in threads]
            for name in trainers if family in TRAINERS[name].families}
    return results


def twin_check(family, data_dir):
    """bench.torch_twin's check that the PyTorch twin is the pipeline's model and augmentation."""
    result = subprocess.run([sys.executable, "-m", "bench.torch_twin", str(data_dir),
                             "--family", family], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the twin's check failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def ratio_to_torch(runs):
    """{trainer: its best median epoch / PyTorch's best}: < 1 is faster than PyTorch."""
    torch = best_of_threads(runs["torch"])["median_epoch_s"]
    return {name: best_of_threads(s)["median_epoch_s"] / torch for name, s in runs.items()}


def reached(summary, target):
    if summary["to_target"] is None:
        return f"not in {summary['epochs']} epoch{'s' if summary['epochs'] > 1 else ''}"
    return f"{summary['to_target'][0]:.1f} s (epoch {summary['to_target'][1]})"


def table(family, runs, threads, recipe, twin=None):
    target = TARGETS["mnist"][family]
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
        "The project and PyTorch run the same recipe on the same data: the uint8 pictures of "
        "each batch cast to floats and normalised by the model's first layer, the same layers "
        "and parameter count, Adam with warm-up and cosine decay, dropout, the same batches and "
        "augmentation on levels 0-255, black coming in (`shift`: one whole-pixel move per batch; "
        "`affine`: one move, turn and scaling per picture, drawn by "
        "`stages.train.affine_transforms` from the same seed, applied by TensorFlow's "
        "ImageProjectiveTransformV3 and torch's `affine_grid` + `grid_sample`), and both score "
        "the validation split within each epoch. `model.fit`: no augmentation, validation within "
        "the epoch, at most 4 epochs. scikit-learn: Adam at a constant 0.001, no dropout, no "
        "augmentation, no validation.",
    ]
    if twin:
        lines += ["", twin_text(twin)]
    return lines


def twin_text(twin):
    """What bench.torch_twin's check found, in a sentence."""
    return (f"The PyTorch twin, checked against the pipeline on {twin['images']} test pictures: "
            f"{twin['keras_parameters']:,} parameters in Keras, {twin['torch_parameters']:,} in "
            f"torch; with the Keras model's weights copied in, probabilities differ by at most "
            f"{twin['probability_difference']:.1e}; the two `{twin['augment']}` augmentations "
            f"under the same random moves differ by at most "
            f"{twin['augmentation_difference']:.1e} in levels 0-255.")


def accuracy_table(dataset, family, summary):
    """One run of the pipeline's trainer: its time and accuracy against the recipe's goal."""
    target = TARGETS[dataset][family]
    changed = ", ".join(f"`{key}={value}`" for key, value in RECIPES[dataset][family].items())
    return [
        f"## Accuracy: {family.upper()} on {dataset}",
        "",
        f"`stages/train.py`'s fit() ({summary['threads']} threads) with the recipe of "
        f"docs/pipeline.md (params.yaml's `train.{family}` with {changed}), the test split "
        "scored after every epoch, outside the timed part.",
        "",
        f"| epochs | median epoch (s) | training (s) | final test accuracy "
        f"| time to {target:.1%} |",
        "|---:|---:|---:|---:|---:|",
        f"| {summary['epochs']} | {summary['median_epoch_s']:.2f} | {summary['train_s']:.1f} | "
        f"{summary['final_accuracy']:.2%} | {reached(summary, target)} |",
    ]
