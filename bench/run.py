"""The benchmark: training speed of both model families against PyTorch (and Keras' model.fit
and scikit-learn), predict's cold start, the API under load and under hostile uploads, the
pipeline's wall times and memory, and how often "not a digit" is answered (bench/refusal.py), in
one run. Writes bench/results.md and prints it.

    pip install -r bench/requirements.txt     # into the project's .venv; apt-get install wrk
    MNIST_MIRROR=../shared/mnist python -m bench
    python -m bench --only training --families cnn --epochs 2 --threads 2   # a quick look
    python -m bench --only api,hostile --model path/to/model.onnx           # the server alone

With MNIST_MIRROR the pipeline and the training runs use real MNIST; without it, random data of
MNIST's shapes (timings hold, accuracies mean nothing). predict and the API run the repository's
model/model.onnx. Nothing here is part of `make test`: timings belong in a benchmark that a
person reads, not in tests that fail on a busy machine.
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from datetime import date
from importlib import metadata
from pathlib import Path

from app.classifier import load_classifier
from app.server.settings import Settings
from bench import coldstart, hostile, load, pipeline, refusal, training
from bench.trainers import recipe
from stages import params
from tests.readings import mnist_available

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.md"
MODEL = REPO / "model" / "model.onnx"
PARTS = ("training", "predict", "api", "hostile", "pipeline", "refusal")
log = logging.getLogger("bench")
DEFAULT_WORKERS = Settings().workers  # what mnist-serve starts on this machine
# The goals this benchmark checks, and their limits.
GOALS = {
    "P1": "one epoch of this project's trainer takes no longer than a PyTorch eager loop's, "
          "each at its best thread count (ratio <= 1.0)",
    "P2": "the MLP's params reach >= 98.0 % test accuracy in <= 10 s of training",
    "P3": "full `dvc repro` <= 30 s, no-op <= 2 s; download and preprocess <= 2 s each "
          "without TensorFlow",
    "P5": "peak RSS of the train stage <= 1.5 GB",
    "predict": "`python -m app.cli one.png` cold: median <= 0.5 s, peak RSS <= 150 MB, "
               "no TensorFlow",
    "api": ">= 400 requests/s, p99 <= 100 ms, no errors (load generator on the same machine)",
    "hostile": "each of the dearest pictures, two at once: 413 or an answer, at most 1 s of CPU "
               "each past the answer's own, none after it; 4 clients sending them all: /health "
               "p99 <= 1 s; the worker and its decode processes < 500 MB (PSS)",
}


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


def training_goals(results, real_data):
    rows = []
    for family, runs in results.items():
        ours = training.best_of_threads(runs["project"])
        torch = training.best_of_threads(runs["torch"])
        ratio = ours["median_epoch_s"] / torch["median_epoch_s"]
        rows.append(f"| P1 ({family.upper()}): {GOALS['P1']} | {ours['median_epoch_s']:.3f} s "
                    f"({ours['threads']} thr.) vs {torch['median_epoch_s']:.3f} s "
                    f"({torch['threads']} thr.): ratio {ratio:.2f} | "
                    f"{verdict(ratio <= 1.0, f'{ratio - 1:.0%} slower')} |")
    if "mlp" in results:
        mlp = training.best_of_threads(results["mlp"]["project"])
        to = mlp["to_target"]
        measured = (f"98 % after {to[0]:.1f} s (epoch {to[1]}); the whole {mlp['epochs']}-epoch "
                    f"run: {mlp['train_s']:.1f} s, {mlp['final_accuracy']:.2%}" if to
                    else f"98 % {training.reached(mlp, 0.98)}")
        ok = verdict(to is not None and to[0] <= 10) if real_data else \
            verdict(False, "needs real MNIST")
        rows.append(f"| P2: {GOALS['P2']} | {measured} | {ok} |")
    return rows


def pipeline_goals(stages_run):
    st = stages_run["stages"]
    data_ok = all(st[n]["seconds"] <= 2 and not st[n]["imports_tensorflow"]
                  for n in ("download", "preprocess"))
    p3_ok = stages_run["repro_full_s"] <= 30 and stages_run["repro_noop_s"] <= 2 and data_ok
    train_gb = st["train"]["peak_rss_mb"] / 1024
    return [
        f"| P3: {GOALS['P3']} | full {stages_run['repro_full_s']:.1f} s, no-op "
        f"{stages_run['repro_noop_s']:.1f} s, download {st['download']['seconds']:.1f} s, "
        f"preprocess {st['preprocess']['seconds']:.1f} s | {verdict(p3_ok)} |",
        f"| P5: {GOALS['P5']} | {train_gb:.2f} GB | {verdict(train_gb <= 1.5)} |",
    ]


def serving_goals(cold, api, flood=None):
    rows = []
    if flood:
        each = flood["each"].values()
        cpu, after = max(r["cpu_s"] for r in each) / 2, max(r["cpu_after_s"] for r in each)
        memory = max([flood["peak"]["pss_mb"]] + [r["pss_mb"] for r in each])
        ok = (flood["flood"]["p99_ms"] <= 1000 and memory < 500 and cpu <= 1.5 and after < 0.1
              and all(set(r["statuses"]) <= {200, 413, 422} for r in each))
        rows.append(f"| hostile: {GOALS['hostile']} | CPU at most {cpu:.2f} s a picture, "
                    f"{after:.2f} s after; p99 {flood['flood']['p99_ms']:.0f} ms; peak "
                    f"{memory:.0f} MB | {verdict(ok)} |")
    if cold:
        ok = cold["median_s"] <= 0.5 and cold["peak_rss_mb"] <= 150 and not cold["heavy_imports"]
        rows.append(f"| predict: {GOALS['predict']} | median {cold['median_s']:.3f} s (max "
                    f"{cold['max_s']:.3f} s), {cold['peak_rss_mb']:.0f} MB, TensorFlow "
                    f"{'imported' if cold['heavy_imports'] else 'not imported'} | {verdict(ok)} |")
    for workers, r in (api["runs"].items() if api else ()):
        if workers != DEFAULT_WORKERS:
            continue  # measured for the table, not a goal: the goal is the server as it starts
        errors = r["non_2xx"] + r["socket_errors"]
        ok = r["rps"] >= 400 and r["p99_ms"] <= 100 and errors == 0
        rows.append(f"| API, {workers} worker{'s' if workers > 1 else ''} (the default here, "
                    f"one per core): {GOALS['api']} | {r['rps']:.0f} requests/s, p99 "
                    f"{r['p99_ms']:.1f} ms, {errors} errors | {verdict(ok)} |")
    return rows


def report(real_data, command, sections, goal_rows, load_avg):
    header = [
        "# Benchmark results",
        "",
        f"Measured {date.today().isoformat()} by `python -m bench` on {cpu_name()}, "
        f"{os.cpu_count()} cores (load average {load_avg:.2f} at the start); Python "
        f"{platform.python_version()}, TensorFlow {version('tensorflow', 'tensorflow-cpu')}, "
        f"PyTorch {version('torch')}, scikit-learn {version('scikit-learn')}, ONNX Runtime "
        f"{version('onnxruntime')}. Command: `{command}`."
        + ("" if real_data is None else " Data: real MNIST from `MNIST_MIRROR`." if real_data
           else " Data: **random data of MNIST's shapes** (no `MNIST_MIRROR`): accuracies "
           "mean nothing."),
    ]
    goals = ["## Goals", "", "| goal | measured | |", "|---|---|---|", *goal_rows]
    return "\n\n".join("\n".join(s) for s in [header, *sections, goals]) + "\n"


def comma_list(convert):
    return lambda text: [convert(item) for item in text.split(",") if item]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=comma_list(str), default=list(PARTS),
                        help=f"the parts to run, of {','.join(PARTS)} (default: all)")
    parser.add_argument("--families", type=comma_list(str), default=["mlp", "cnn"])
    parser.add_argument("--threads", type=comma_list(int), default=[1, 2],
                        help="thread counts every trainer runs at (default: 1,2)")
    parser.add_argument("--epochs", type=int, help="epochs of every trainer (default: each "
                        "family's recipe; model.fit at most 4): a small number for a smoke run")
    parser.add_argument("--model", type=Path, default=MODEL, help=f"default: {MODEL}")
    parser.add_argument("--runs", type=int, default=7, help="predict cold starts (default: 7)")
    parser.add_argument("--workers", type=comma_list(int),
                        default=sorted({1, DEFAULT_WORKERS}),
                        help="API worker counts (default: 1 and the server's default, "
                             f"{DEFAULT_WORKERS} here)")
    parser.add_argument("--api-seconds", type=int, default=10,
                        help="seconds of load for each worker count (default: 10)")
    parser.add_argument("--output", type=Path, help=f"default: {RESULTS} when every part "
                        "runs, else only printed")
    args = parser.parse_args(argv)
    for value, allowed in ((args.only, PARTS), (args.families, ("mlp", "cnn"))):
        if not value or set(value) - set(allowed):
            parser.error(f"expected a comma-separated list of {', '.join(allowed)}")
    if args.output is None and set(args.only) == set(PARTS):
        args.output = RESULTS
    args.model = args.model.resolve()  # predict and the API run in the repository's root
    return args


def measure_training(args, parts, tmp, train_params):
    """The pipeline (in a fresh copy of the repository) and the trainers (on that copy's data):
    their sections of the page, their rows of the goals, the pipeline's last."""
    sections, goal_rows = [], []
    mirror = os.environ.get("MNIST_MIRROR")
    if mirror and "://" not in mirror:
        mirror = str(Path(mirror).resolve())  # the stages run in a temporary directory
    repo = tmp / "repo"
    repo.mkdir()
    pipeline.copy_repo(repo)
    if not mirror:
        mirror = tmp / "random-mirror"
        mirror.mkdir()
        pipeline.use_random_data(repo, mirror)
    env = pipeline.pipeline_env(mirror)
    stages_run = None
    if "pipeline" in parts:
        log.info("dvc repro and each stage in a fresh copy ...")
        stages_run = pipeline.measure(repo, env)
    if "training" in parts:
        data_dir = repo / "data" / "processed" if stages_run else pipeline.prepare_data(repo, env)
        results = training.measure(args.families, data_dir, args.threads, args.epochs)
        for family, runs in results.items():
            cfg = recipe(family)
            parity = (training.affine_parity(family, data_dir)
                      if cfg["augment"] == "affine" else None)
            sections.append(training.table(family, runs, args.threads, cfg, parity))
        goal_rows += training_goals(results, bool(os.environ.get("MNIST_MIRROR")))
    if stages_run:
        pipeline_section = pipeline.table(stages_run, train_params["model"])
        return sections + [pipeline_section], goal_rows + pipeline_goals(stages_run)
    return sections, goal_rows


def measure_serving(args, parts, tmp):
    """predict's cold start and the API under load, with the repository's model."""
    if not args.model.is_file():
        return [["## predict and the API", "",
                 f"Not measured: no model at {args.model} (run `dvc repro`)."]], []
    png, label = coldstart.digit_png(tmp / "one.png"), model_label(args.model)
    sections, cold, api, flood = [], None, None, None
    if "predict" in parts:
        log.info("predict's cold start ...")
        cold = coldstart.measure(args.model, png, args.runs)
        sections.append(coldstart.table(cold, label))
    if "api" in parts:
        log.info("the API under load ...")
        api = load.measure(args.model, png, args.workers, seconds=args.api_seconds)
        sections.append(load.table(api, label))
    if "hostile" in parts:
        log.info("the server under hostile uploads ...")
        flood = hostile.measure(args.model)
        sections.append(hostile.table(flood, label))
    return sections, serving_goals(cold, api, flood)


def measure_refusal(model):
    """"Not a digit" on both sides (bench/refusal.py), with the repository's model and data."""
    if not (model.is_file() and mnist_available()):
        return [["## Not a digit", "", f"Not measured: needs {model}, and {refusal.MNIST} or "
                 "MNIST_MIRROR."]], []
    log.info("not a digit: real digits and scrawls ...")
    results = refusal.measure(load_classifier(model))
    return ([["## Not a digit", "", refusal.table(results)]],
            [f"| {goal} | {measured} | {verdict(met)} |" for goal, measured, met in
             refusal.goals(results)])


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    load_avg = os.getloadavg()[0]
    parts = [p for p in PARTS if p in args.only]
    train_params = params.load(REPO / "params.yaml").train.model_dump()
    real_data = None  # None: no part used the data set
    sections, goal_rows = [], []
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        if {"pipeline", "training"} & set(parts):
            sections, goal_rows = measure_training(args, parts, Path(tmp), train_params)
            real_data = bool(os.environ.get("MNIST_MIRROR"))
        if {"predict", "api", "hostile"} & set(parts):
            more_sections, more_rows = measure_serving(args, parts, Path(tmp))
            sections, goal_rows = sections + more_sections, goal_rows + more_rows
        if "refusal" in parts:
            more_sections, more_rows = measure_refusal(args.model)
            sections, goal_rows = sections + more_sections, goal_rows + more_rows

    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    text = report(real_data, command, sections, goal_rows, load_avg)
    if args.output:
        args.output.write_text(text)
    print(text)


def model_label(model):
    """`model/model.onnx` (the MLP): the path as a user types it, and the family train wrote."""
    try:
        shown = model.relative_to(REPO)
    except ValueError:
        shown = model
    try:
        family = json.loads((model.parent / "metadata.json").read_text())["family"].upper()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        family = "family unknown"
    return f"`{shown}` ({family})"


if __name__ == "__main__":
    main()
