"""What a pull request changes, for the GitHub job summary: the metrics and params diffs as
tables, and every chart of `dvc plots diff` as a PNG, base and workspace overlaid.

    python .github/pr_summary.py BASE OUT_DIR [--image-url URL]

Writes OUT_DIR/summary.md and OUT_DIR/*.png. The charts are drawn by vl-convert-python, which
holds Vega itself: no browser, no network. GitHub's Markdown shows no embedded (data:) images,
so the summary links each PNG at --image-url/NAME.png, where the workflow publishes them (see
.github/workflows/pipeline.yml); without --image-url it names the files, for the artifact.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

# Pixels per chart pixel: DVC's charts are 300 wide, too small to read on a 2x screen.
SCALE = 2


def dvc(*args):
    return subprocess.run(["dvc", *args], capture_output=True, text=True, check=True).stdout


def file_name(plot_id):
    """'Loss (train vs validation)' -> 'loss-train-vs-validation.png'."""
    return re.sub(r"[^a-z0-9]+", "-", plot_id.lower()).strip("-") + ".png"


def charts(base):
    """{plot id: Vega-Lite spec} of every chart `dvc plots diff BASE` draws, data inside."""
    data = json.loads(dvc("plots", "diff", base, "--json"))["data"]
    return {plot_id: renderer["content"] for plot_id, renderers in data.items()
            for renderer in renderers if renderer["type"] == "vega"}


def draw(spec, target):
    import vl_convert

    target.write_bytes(vl_convert.vegalite_to_png(vl_spec=spec, scale=SCALE))


def summary(base, out, image_url=None):
    """Write the PNGs and summary.md into `out`; return summary.md's text."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"## Metrics: workspace vs {base}", "", dvc("metrics", "diff", base, "--md"),
             f"## Params: workspace vs {base}", "", dvc("params", "diff", base, "--md"),
             f"## Plots: workspace vs {base}", ""]
    for plot_id, spec in charts(base).items():
        name = file_name(plot_id)
        draw(spec, out / name)
        where = f"{image_url.rstrip('/')}/{name}" if image_url else name
        lines.append(f"![{plot_id}]({where})" if image_url else f"- {plot_id}: `{where}`")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python .github/pr_summary.py")
    parser.add_argument("base", help="the git revision to compare with (the base branch)")
    parser.add_argument("out", type=Path, help="the folder for summary.md and the PNGs")
    parser.add_argument("--image-url", help="where the PNGs will be published, for the links")
    args = parser.parse_args(argv)
    try:
        summary(args.base, args.out, args.image_url)
    except subprocess.CalledProcessError as error:
        sys.exit(f"error: {' '.join(error.cmd)} failed: {error.stderr.strip()}")


if __name__ == "__main__":
    main()
