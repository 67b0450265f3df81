"""The benchmark: training speed of both model families against PyTorch (and Keras' model.fit
and scikit-learn), the accuracy of the recipes on MNIST and of the CNN's on Fashion-MNIST,
folders of pictures read by the pipeline, predict's cold start, the API under load and under
hostile uploads, the pipeline's wall times and memory, how often "not a digit" is answered
(bench/refusal.py) and, when bench/operators.py is there, what operators see (metrics on and
off, a reload under load), in one run. Writes bench/results.md and prints it.

    pip install -r bench/requirements.txt     # into the project's .venv; apt-get install wrk
    MNIST_MIRROR=../shared/mnist FASHION_MNIST_MIRROR=/usr/share/datasets/fashion-mnist \
        python -m bench
    python -m bench --quick                   # every part in its quickest form: a smoke run
    python -m bench --only training --families cnn --epochs 2 --threads 2   # a quick look
    python -m bench --only api,hostile --model path/to/model.onnx           # the server alone

With MNIST_MIRROR the pipeline and the training runs use real MNIST; without it, random data of
MNIST's shapes (timings hold, accuracies mean nothing). The Fashion-MNIST parts (fashion,
folders) read FASHION_MNIST_MIRROR, else Debian's dataset-fashion-mnist folder; without either,
the folders part reads the generated colour pictures alone. predict and the API run the
repository's model/model.onnx. Nothing here is part of `make test`: timings belong in a
benchmark that a person reads, not in tests that fail on a busy machine.
"""

import argparse
import contextlib
import importlib.util
import io
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
from bench import coldstart, folders, hostile, load, pipeline, refusal, training
from bench.trainers import recipe
from stages.common import params
from tests.readings import mnist_available

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.md"
MODEL = REPO / "model" / "model.onnx"
# bench/operators.py is another engineer's, and may not be there yet: its part runs if it is.
OPERATORS = importlib.util.find_spec("bench.operators") is not None
PARTS = ("training", "predict", "api", "hostile", "pipeline", "refusal", "folders",
         "fashion") + (("operators",) if OPERATORS else ())
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
    "accuracy": "params.yaml's {family} recipe on MNIST: >= {target:.1%} test accuracy",
    "fashion": "the CNN's Fashion-MNIST recipe (docs/pipeline.md): >= {target:.0%} test "
               "accuracy",
    "predict": "`python -m app.cli one.png` cold: median <= 0.5 s, peak RSS <= 150 MB, "
               "no TensorFlow",
    "api": ">= 400 requests/s, p99 <= 100 ms, no errors (load generator on the same machine)",
    "hostile": "each of the dearest pictures, two at once: 413 or an answer, at most 1 s of CPU "
               "each past the answer's own, none after it; 4 clients sending them all: /health "
               "p99 <= 1 s; the worker and its decode processes < 500 MB (PSS)",
}
# What a quick run (--quick) measures, where the options do not say otherwise.
QUICK = {"epochs": 1, "runs": 2, "api_seconds": 2}


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


def epochs(count):
    return f"{count} epoch{'s' if count != 1 else ''}"


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
    for family, runs in results.items():
        # The pipeline's own trainer at its best thread count: what `dvc repro` gives.
        ours, target = training.best_of_threads(runs["project"]), training.TARGETS["mnist"][family]
        ok = verdict(ours["final_accuracy"] >= target) if real_data else \
            verdict(False, "needs real MNIST")
        rows.append(f"| {GOALS['accuracy'].format(family=family.upper(), target=target)} | "
                    f"{ours['final_accuracy']:.2%} after {epochs(ours['epochs'])} | {ok} |")
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


def markdown_rows(rows):
    """Markdown rows of the goals table from (goal, measured, met) triples."""
    return [f"| {goal} | {measured} | {verdict(met)} |" for goal, measured, met in rows]


def report(data, command, sections, goal_rows, load_avg):
    header = [
        "# Benchmark results",
        "",
        f"Measured {date.today().isoformat()} by `python -m bench` on {cpu_name()}, "
        f"{os.cpu_count()} cores (load average {load_avg:.2f} at the start); Python "
        f"{platform.python_version()}, TensorFlow {version('tensorflow', 'tensorflow-cpu')}, "
        f"PyTorch {version('torch')}, scikit-learn {version('scikit-learn')}, ONNX Runtime "
        f"{version('onnxruntime')}. Command: `{command}`." + "".join(f" {d}" for d in data),
    ]
    goals = ["## Goals", "", "| goal | measured | |", "|---|---|---|", *goal_rows]
    return "\n\n".join("\n".join(s) for s in [header, *sections, goals]) + "\n"


def data_used(parts):
    """What the report says of the data the parts read."""
    said = []
    if {"pipeline", "training"} & set(parts):
        said.append("Data: real MNIST from `MNIST_MIRROR`." if os.environ.get("MNIST_MIRROR")
                    else "Data: **random data of MNIST's shapes** (no `MNIST_MIRROR`): "
                    "accuracies mean nothing.")
    if {"fashion", "folders"} & set(parts):
        said.append(f"Fashion-MNIST from `{fashion_mirror()}`." if fashion_mirror()
                    else "No Fashion-MNIST (`FASHION_MNIST_MIRROR`).")
    return said


def comma_list(convert):
    return lambda text: [convert(item) for item in text.split(",") if item]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=comma_list(str), default=list(PARTS),
                        help=f"the parts to run, of {','.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every part in its quickest form: "
                        f"{QUICK['epochs']} epoch per trainer, folders' {folders.QUICK:,} "
                        f"pictures of each and no training, {QUICK['runs']} cold starts, "
                        f"{QUICK['api_seconds']} s of load (the options below still apply)")
    parser.add_argument("--families", type=comma_list(str), default=["mlp", "cnn"])
    parser.add_argument("--threads", type=comma_list(int), default=[1, 2],
                        help="thread counts every trainer runs at (default: 1,2)")
    parser.add_argument("--epochs", type=int, help="epochs of every trainer (default: each "
                        "family's recipe; model.fit at most 4): a small number for a smoke run")
    parser.add_argument("--model", type=Path, default=MODEL, help=f"default: {MODEL}")
    parser.add_argument("--runs", type=int, help="predict cold starts (default: 7)")
    parser.add_argument("--workers", type=comma_list(int),
                        default=sorted({1, DEFAULT_WORKERS}),
                        help="API worker counts (default: 1 and the server's default, "
                             f"{DEFAULT_WORKERS} here)")
    parser.add_argument("--api-seconds", type=int,
                        help="seconds of load for each worker count (default: 10)")
    parser.add_argument("--output", type=Path, help=f"default: {RESULTS} when every part "
                        "runs in full, else only printed")
    args = parser.parse_args(argv)
    for value, allowed in ((args.only, PARTS), (args.families, ("mlp", "cnn"))):
        if not value or set(value) - set(allowed):
            parser.error(f"expected a comma-separated list of {', '.join(allowed)}")
    for name, default in {"epochs": None, "runs": 7, "api_seconds": 10}.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    if args.output is None and set(args.only) == set(PARTS) and not args.quick:
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
            log.info("the PyTorch twin of the %s against the pipeline's ...", family)
            sections.append(training.table(family, runs, args.threads, recipe(family),
                                           training.twin_check(family, data_dir)))
        goal_rows += training_goals(results, bool(os.environ.get("MNIST_MIRROR")))
    if stages_run:
        pipeline_section = pipeline.table(stages_run, train_params["model"])
        return sections + [pipeline_section], goal_rows + pipeline_goals(stages_run)
    return sections, goal_rows


def fashion_mirror():
    """The folder of Fashion-MNIST's IDX files, or None."""
    found = Path(os.environ.get("FASHION_MNIST_MIRROR") or folders.FASHION_MNIST)
    return found.resolve() if found.is_dir() else None


def measure_fashion(args, tmp):
    """The CNN's Fashion-MNIST recipe (bench.trainers.RECIPES) trained by the pipeline's own
    fit() at the recipe's thread count, on data made by download and preprocess."""
    mirror, goal = fashion_mirror(), training.TARGETS["fashion-mnist"]["cnn"]
    if not mirror:
        return [["## Accuracy: CNN on fashion-mnist", "", "Not measured: no Fashion-MNIST "
                 f"(FASHION_MNIST_MIRROR, or {folders.FASHION_MNIST})."]], []
    log.info("the CNN's recipe on Fashion-MNIST ...")
    folder = folders.stage_folder(tmp / "fashion", "fashion-mnist")
    data_dir = pipeline.prepare_data(folder, {**os.environ, "FASHION_MNIST_MIRROR": str(mirror)})
    threads = recipe("cnn", "fashion-mnist")["threads"] or os.cpu_count()
    summary = training.measure(["cnn"], data_dir, [threads], args.epochs, "fashion-mnist",
                               ["project"])["cnn"]["project"][0]
    return ([training.accuracy_table("fashion-mnist", "cnn", summary)],
            markdown_rows([(GOALS["fashion"].format(target=goal),
                        f"{summary['final_accuracy']:.2%} after {epochs(summary['epochs'])} "
                        f"({summary['train_s']:.0f} s)", summary["final_accuracy"] >= goal)]))


def measure_folders(args):
    """Folders of pictures read by download and preprocess (bench/folders.py)."""
    log.info("folders of pictures: writing, reading, splitting%s ...",
             "" if args.quick else ", and Fashion-MNIST trained from PNG and from IDX")
    results = folders.measure(fashion_mirror(), args.quick)
    return [folders.table(results)], markdown_rows(folders.goals(results))


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
    """"Not a digit" on both sides (bench/refusal.py), with the repository's model and data:
    an MNIST digit model's, the one that the digit checks judge."""
    classifier = load_classifier(model) if model.is_file() else None
    if not (classifier and refusal.digit_model(classifier) and mnist_available()):
        return [["## Not a digit", "", f"Not measured: needs an MNIST digit model at {model}, "
                 f"and {refusal.MNIST} or MNIST_MIRROR."]], []
    log.info("not a digit: real digits and scrawls ...")
    results = refusal.measure(classifier)
    return [["## Not a digit", "", refusal.table(results)]], markdown_rows(refusal.goals(results))


def measure_operators():
    """bench/operators.py's section, as its main() prints it."""
    from bench import operators

    log.info("operators: metrics on and off, a reload under load ...")
    printed, argv = io.StringIO(), sys.argv
    # Its main() may read the command line: it gets one of its own, not this benchmark's.
    sys.argv = ["python -m bench.operators"]
    try:
        with contextlib.redirect_stdout(printed):
            operators.main()
    finally:
        sys.argv = argv
    return [printed.getvalue().strip().splitlines()], []


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    load_avg = os.getloadavg()[0]
    parts = [p for p in PARTS if p in args.only]
    train_params = params.load(REPO / "params.yaml").train.model_dump()
    sections, goal_rows = [], []

    def add(more):
        sections.extend(more[0])
        goal_rows.extend(more[1])

    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as tmp:
        if {"pipeline", "training"} & set(parts):
            add(measure_training(args, parts, Path(tmp), train_params))
        if "fashion" in parts:
            add(measure_fashion(args, Path(tmp)))
        if "folders" in parts:
            add(measure_folders(args))
        if {"predict", "api", "hostile"} & set(parts):
            add(measure_serving(args, parts, Path(tmp)))
        if "refusal" in parts:
            add(measure_refusal(args.model))
        if "operators" in parts:
            add(measure_operators())

    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    text = report(data_used(parts), command, sections, goal_rows, load_avg)
    if args.output:
        args.output.write_text(text)
    print(text)


def model_label(model):
    """`model/model.onnx` (MLP, mnist): the path as a user types it, and what the model says it
    is (its metadata, app/metadata.py)."""
    try:
        shown = model.relative_to(REPO)
    except ValueError:
        shown = model
    info = load_classifier(model).info
    return f"`{shown}` ({info.family.upper()}, {info.dataset})"


if __name__ == "__main__":
    main()
