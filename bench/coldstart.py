"""predict's cold start: `python -m app.cli IMAGE --model MODEL` in a fresh process, run a
few times for its wall time and peak memory, and once more under `-X importtime` to see what
it imports (TensorFlow must not be among it)."""

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "keras", "torch", "tf2onnx")  # what a cold start must not import


def digit_png(path, digit="7"):
    """A small PNG of a white digit on black, drawn with Pillow's bundled font: what the page
    sends, and no data set needed."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=20)
    left, top, right, bottom = draw.textbbox((0, 0), digit, font=font)
    draw.text(((28 - (right - left)) / 2 - left, (28 - (bottom - top)) / 2 - top), digit,
              fill=255, font=font)
    canvas.save(path)
    return path


# The command is started by a small launcher, not by this process: a child forked from a process
# that holds TensorFlow and the training data would report that process's peak as its own (Linux
# keeps the high-water mark of RSS across fork and exec). The launcher prints the command's wall
# time, peak RSS (os.wait4: its own, in KiB) and exit status on the last line.
LAUNCHER = """import os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stderr=subprocess.STDOUT)
_, status, usage = os.wait4(proc.pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_once(cmd):
    """(wall seconds, peak RSS in MB, output) of one process; fails loudly if it fails."""
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    *lines, last = result.stdout.decode(errors="replace").rstrip("\n").split("\n")
    seconds, peak_kib, status = last.split()
    output = "\n".join(lines) + "\n"
    if result.returncode != 0 or status != "0":
        raise RuntimeError(f"{' '.join(cmd)} exited {status}:\n{output[-3000:]}")
    return float(seconds), int(peak_kib) / 1024, output


def imports(importtime_text):
    """(module, depth, cumulative seconds) of each line of `python -X importtime`: 'import
    time: self | cumulative | <indent>name', indented by two spaces per level below the first."""
    for line in importtime_text.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            yield name.strip(), (len(name) - len(name.lstrip()) - 1) // 2, int(parts[1]) / 1e6


def top_level_imports(importtime_text):
    """{module: cumulative seconds} of the modules not imported by another module."""
    return {name: s for name, depth, s in imports(importtime_text) if depth == 0}


def all_imports(importtime_text):
    return {name for name, _, _ in imports(importtime_text)}


def measure(model, image, runs=7):
    cmd = [sys.executable, "-m", "app.cli", str(image), "--model", str(model)]
    results = [run_once(cmd) for _ in range(runs)]
    started = time.perf_counter()
    probe = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], cwd=REPO,
                           capture_output=True, text=True)
    probe_s = time.perf_counter() - started
    modules = all_imports(probe.stderr)
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    imports = sorted(top_level_imports(probe.stderr).items(), key=lambda kv: -kv[1])
    seconds = [r[0] for r in results]
    return {"runs": runs, "seconds": seconds, "median_s": statistics.median(seconds),
            "max_s": max(seconds), "peak_rss_mb": max(r[1] for r in results),
            "output": results[-1][2].strip().replace(str(image), Path(image).name),
            "heavy_imports": heavy,
            "slowest_imports": imports[:3], "importtime_run_s": probe_s}


def table(cold, model_label):
    heavy = ", ".join(cold["heavy_imports"][:5]) or "none"
    slowest = ", ".join(f"`{name}` {s:.2f} s" for name, s in cold["slowest_imports"])
    return [
        "## predict: cold start",
        "",
        f"`python -m app.cli one.png --model MODEL` with {model_label}, in a fresh process, "
        f"{cold['runs']} times in a row (the first may find the files out of the page cache); "
        "peak RSS from `os.wait4`, per process.",
        "",
        "| runs | median (s) | max (s) | peak RSS, largest (MB) | imports TensorFlow, Keras or "
        "torch |",
        "|---:|---:|---:|---:|---|",
        f"| {cold['runs']} | {cold['median_s']:.3f} | {cold['max_s']:.3f} | "
        f"{cold['peak_rss_mb']:.0f} | {'no' if not cold['heavy_imports'] else heavy} |",
        "",
        f"Its answer: `{cold['output']}`. The slowest imports under `-X importtime` (which "
        f"slows them): {slowest}.",
    ]
