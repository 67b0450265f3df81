"""The predict CLI against a real exported model (the `model_dir` fixture: a small MLP trained
on drawn digits, exported to ONNX), run as users run it.

Images made from those digits (small and large, inverted, coloured, JPEG, transparent) must get
the digit the model gives the original array; damaged, blank, huge or foreign files must each cost
one line on stderr and never stop the other images. Predict runs without TensorFlow.
"""

import json
import os
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from app import cli
from app.metadata import METADATA_KEY
from app.pictures.decode import InputError, read_grey
from app.pictures.digit import centre_of_mass, to_mnist_form
from tests.conftest import REPO, WITHOUT_TRAINING_PACKAGES, built_once
from tests.digits import draw_digit, mnist_form_digits, png_bytes
from tests.drawings import canvas_png
from tests.hostile_pictures import (
    app0_flood_jpeg,
    bad_checksum_png,
    png,
    progressive_jpeg,
    rle8_bmp,
    scan_per_channel_cmyk_jpeg,
)
from tests.photos import make_photo

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def model_file(model_dir):
    return model_dir / "model.onnx"


@pytest.fixture(scope="module")
def model_says(model_dir):
    """The model's own digit for each array of MNIST-form pixels, without predict's code: the
    Keras model (which normalises its input itself) on them."""
    import keras

    model = keras.saving.load_model(model_dir / "model.keras")
    return lambda x: model.predict(np.asarray(x, np.float32).reshape(-1, 28, 28, 1),
                                   verbose=0).argmax(axis=1)


def run_main(capsys, *args):
    """predict's main in this process: (status, stdout, stderr)."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def run_cli(*args, home=None):
    """The real command, in a process where the training packages cannot be imported; with
    `home`, that is the user's home folder."""
    code = ("import runpy, sys\n" + WITHOUT_TRAINING_PACKAGES
            + "runpy.run_module('app.cli', run_name='__main__', alter_sys=True)\n")
    env = {**os.environ, **({"HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def drawn(digit, size, canvas, at, seed=0):
    """A white `digit` about `size` pixels tall, drawn at `at` on a black `canvas` (h, w)."""
    small = draw_digit(digit, np.random.default_rng(seed))
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    field = Image.new("L", canvas[::-1], 0)
    field.paste(image, at)
    return np.asarray(field)


def ink_box(pixels):
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


# --- the transform ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(28, 28), (200, 150), (37, 411), (900, 640)])
def test_mnist_form_is_a_20_pixel_digit_centred_by_mass_in_28x28(shape):
    grey = drawn(4, min(shape) * 3 // 4, shape, (shape[1] // 8, shape[0] // 8))
    out = to_mnist_form(grey)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert 18 <= max(ink_box(out)) <= 20
    assert np.allclose(centre_of_mass(out.astype(float)), (14, 14), atol=1.0)


def test_dark_on_light_is_inverted():
    grey = drawn(7, 150, (200, 200), (25, 25))
    out, inverted = to_mnist_form(grey), to_mnist_form(255 - grey)
    assert inverted[0].max() == inverted[:, 0].max() == 0  # black background, white ink
    assert np.abs(out.astype(int) - inverted).mean() < 2


def test_small_digit_off_centre_is_fitted_and_centred():
    centred = to_mnist_form(drawn(3, 150, (200, 200), (25, 25)))
    corner = to_mnist_form(drawn(3, 30, (400, 300), (250, 10)))
    assert np.allclose(centre_of_mass(corner.astype(float)), (14, 14), atol=1.0)
    assert 18 <= max(ink_box(corner)) <= 20
    assert np.corrcoef(centred.ravel(), corner.ravel())[0, 1] > 0.9


def test_mnist_form_digit_comes_back_nearly_unchanged():
    x, _ = mnist_form_digits(20, seed=5)
    again = np.stack([to_mnist_form(d) for d in x])
    assert np.abs(again.astype(int) - x).mean() < 5


@pytest.mark.parametrize("grey", [np.full((50, 40), 255), np.zeros((28, 28)),
                                  np.random.default_rng(0).integers(230, 256, (64, 64))])
def test_blank_or_faint_image_has_no_digit(grey):
    with pytest.raises(InputError, match="blank"):
        to_mnist_form(grey)


def save_variants(path, grey):
    """The same white-on-black digit as files in many colour modes, all meaning the same."""
    ink = Image.fromarray(grey)
    paper = Image.fromarray(255 - grey)
    files = {
        "L.png": ink, "1.bmp": ink.point(lambda v: 255 * (v > 127)).convert("1"),
        "P.bmp": paper.convert("RGB").convert("P"), "RGB.jpg": paper.convert("RGB"),
        "CMYK.jpg": paper.convert("CMYK"),
        "I16.png": Image.fromarray(grey.astype(np.uint16) * 257),
        # Black ink whose opacity is the digit, on a transparent background: white paper.
        "RGBA.png": Image.merge("RGBA", [Image.new("L", ink.size, 0)] * 3 + [ink]),
        "LA.png": Image.merge("LA", [Image.new("L", ink.size, 0), ink]),
        "P-transparent.png": paper.convert("P"),
    }
    for name, image in files.items():
        # The palette image's paper (its corner colour) is marked transparent.
        image.save(path / name, transparency=image.getpixel((0, 0)) if image.mode == "P" else None)
    return [path / name for name in files]


def test_every_colour_mode_reads_as_the_same_digit(tmp_path):
    grey = drawn(5, 90, (120, 100), (5, 15))
    reference = to_mnist_form(grey).ravel()
    for path in save_variants(tmp_path, grey):
        with open(path, "rb") as file:  # as predict and the server read it
            got = to_mnist_form(read_grey(file)).ravel()
        assert np.corrcoef(reference, got)[0, 1] > 0.9, path.name


# --- predictions --------------------------------------------------------------------------------

def write_image_variants(directory, x):
    """Per MNIST-form digit: itself as a PNG; 200x200 black on white as PNG, blue-on-cream RGB
    and JPEG; black ink on a transparent background."""
    variants = {}
    for i, pixels in enumerate(x):
        big = np.asarray(Image.fromarray(pixels).resize((200, 200), Image.Resampling.BICUBIC))
        weight = (big / 255.0)[..., None]
        colour = (1 - weight) * [250, 240, 200] + weight * [20, 30, 120]
        images = {
            "white-on-black.png": Image.fromarray(pixels),
            "black-on-white.png": Image.fromarray(255 - big),
            "rgb.png": Image.fromarray(colour.round().astype(np.uint8)),
            "jpeg.jpg": Image.fromarray(255 - big),
            "rgba.png": Image.merge("RGBA", [Image.new("L", (200, 200), 0)] * 3
                                    + [Image.fromarray(big)]),
        }
        for kind, image in images.items():
            path = directory / f"{i:03d}-{kind}"
            image.save(path, quality=80)  # quality: JPEG only
            variants.setdefault(kind, []).append(path)
    return variants


def test_predictions_agree_with_the_model_on_the_original_arrays(tmp_path, capsys, model_file,
                                                                  model_says):
    x, y = mnist_form_digits(60, seed=2)
    expected = model_says(x)
    assert np.mean(expected == y) >= 0.8, "the fixture model should know its digits"

    variants = write_image_variants(tmp_path, x)
    paths = [p for kind in variants.values() for p in kind]
    status, out, err = run_main(capsys, "--json", "--model", model_file, *paths)
    assert status == 0 and err == "", err
    # The model's best guess, refused or not: the transform is what is checked here.
    digits = {r["file"]: int(r["top"][0]["label"]) for r in json.loads(out)}

    rates = {kind: np.mean([digits[str(p)] for p in files] == expected)
             for kind, files in variants.items()}
    print("agreement per variant:", {k: f"{v:.1%}" for k, v in rates.items()})
    assert np.mean(list(rates.values())) >= 0.95, rates
    assert min(rates.values()) >= 0.9, rates


@pytest.fixture(scope="module")
def good_png(tmp_path_factory):
    x, y = mnist_form_digits(10, seed=3)
    path = tmp_path_factory.mktemp("good") / "seven.png"
    path.write_bytes(png_bytes(x[list(y).index(7)]))
    return path


def test_top_k_lists_k_digits_most_likely_first(capsys, model_file, good_png):
    status, out, err = run_main(capsys, "--top", "3", "--model", model_file, good_png)
    assert status == 0 and err == ""
    line = out.strip()
    match = re.fullmatch(rf"{re.escape(str(good_png))}: " + ", ".join([r"(\d) \((\d+\.\d)%\)"] * 3),
                         line)
    assert match, line
    digits, percents = match.groups()[::2], [float(p) for p in match.groups()[1::2]]
    assert len(set(digits)) == 3 and percents == sorted(percents, reverse=True)
    assert sum(percents) <= 100.2


def test_json_gives_file_digit_probability_and_top_list(capsys, model_file, good_png):
    status, out, _ = run_main(capsys, "--json", "--top", "4", "--model", model_file, good_png,
                              good_png.parent / "missing.png")
    assert status == 1
    found, missing = json.loads(out)
    assert found["file"] == str(good_png) and found["label"] in DIGITS
    assert [t["label"] for t in found["top"]][0] == found["label"]
    assert found["top"][0]["probability"] == found["probability"]
    assert len(found["top"]) == 4 and 0 < sum(t["probability"] for t in found["top"]) <= 1.0001
    assert missing == {"file": str(good_png.parent / "missing.png"),
                       "error": "no such file or directory"}


# --- bad input ----------------------------------------------------------------------------------

def write_png_1bit(path, width, height):
    """A valid all-black PNG of any size; 1 bit per pixel and zlib make it a few kilobytes."""
    Image.new("1", (width, height)).save(path)


def write_sparse(path, size):
    """A file of `size` bytes that starts as a JPEG does and takes no room on disk."""
    path.write_bytes(b"\xff\xd8\xff")
    os.truncate(path, size)


# file name -> (how to make it, what its stderr line must say)
BAD_INPUTS = {
    "missing.png": (None, "no such file"),
    "notes.png": (lambda p: p.write_text("not an image, only text\n"), "not a picture \\(BMP"),
    "cut.png": (lambda p: p.write_bytes(
        png_bytes(drawn(2, 150, (200, 200), (25, 25)))[:1500]), "truncated"),
    "blank.png": (lambda p: Image.new("RGB", (64, 64), "white").save(p), "blank"),
    "49mp.png": (lambda p: write_png_1bit(p, 7000, 7000), "over the 40-megapixel limit"),
    # Past Pillow's own limit, which would warn, and past twice that, where it refuses: the
    # line quotes the app's limit, not Pillow's.
    "100mp.png": (lambda p: write_png_1bit(p, 10000, 10000), "over the 40-megapixel limit"),
    "225mp.png": (lambda p: write_png_1bit(p, 15000, 15000), "over the 40-megapixel limit"),
    "bad-crc.png": (lambda p: p.write_bytes(bad_checksum_png()), "a damaged PNG image"),
    "16-bit-rgba.png": (lambda p: p.write_bytes(png(6300, 6300, 6, 16)),
                        "takes over the 128 MB allowed"),
    # Costly in ways no header shows: stopped by the decode process's bounds.
    "1000-scans.jpg": (lambda p: p.write_bytes(progressive_jpeg(6000, 1000, hidden=True)),
                       "took over 1 s of CPU time"),
    "rle8.bmp": (lambda p: p.write_bytes(rle8_bmp()), "took over 1 s of CPU time"),
    "scan-per-channel.jpg": (lambda p: p.write_bytes(scan_per_channel_cmyk_jpeg(6320)),
                             "cannot be decoded within the memory a picture may take"),
    "wide-palette.png": (lambda p: p.write_bytes(png(5_000_000, 8, 3, 8, palette=True)),
                         "takes over the 128 MB allowed"),
    "app0-flood.jpg": (lambda p: p.write_bytes(app0_flood_jpeg()),
                       "took over 1 s of CPU time|takes over the 128 MB allowed"),
    # Refused from its size, before a byte of it is read: a gigabyte of nothing (sparse).
    "1-gib.jpg": (lambda p: write_sparse(p, 2**30),
                  "1,024 MB is over the 10 MB limit for a picture"),
    # A file named as a picture that holds something else.
    "pickled.png": (lambda p: p.write_bytes(pickle.dumps({"x": 1})), "not a picture \\(BMP"),
    "fifo.png": (lambda p: os.mkfifo(p), "not a regular file"),
    "folder.png": (lambda p: p.mkdir(), r"not a regular file \(a folder\)"),
    "new\nline.png": (lambda p: p.write_text("text"), "not a picture \\(BMP"),
    "thin.png": (lambda p: Image.new("L", (1000, 1), 0).save(p), "too small to hold a digit"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, worker_id):
    """Every bad input, made once for the whole run (the huge pictures take seconds of CPU),
    however many workers run these tests."""
    def build(directory):
        for name, (make, _) in BAD_INPUTS.items():
            if make:
                make(directory / name)

    directory = built_once(tmp_path_factory, worker_id, "bad-inputs", build)
    return {name: directory / name for name in BAD_INPUTS}


@pytest.fixture(scope="module")
def mixed_run(model_file, good_png, bad_files):
    """One real CLI run over a good image, every bad input, then the good image again."""
    return run_cli("--model", model_file, good_png, *bad_files.values(), good_png)


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_costs_one_line_and_spares_the_others(name, mixed_run, bad_files, good_png):
    shown = cli.printable(str(bad_files[name]))  # a newline in a name is shown as \\n
    lines = [line for line in mixed_run.stderr.splitlines() if shown in line]
    assert len(lines) == 1, mixed_run.stderr
    assert re.search(BAD_INPUTS[name][1], lines[0]), lines[0]
    assert mixed_run.returncode == 1
    assert mixed_run.stdout.count(f"{good_png}: ") == 2, mixed_run.stdout


@pytest.mark.slow
def test_stderr_holds_nothing_but_the_bad_inputs(mixed_run):
    assert len(mixed_run.stderr.splitlines()) == len(BAD_INPUTS), mixed_run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["49mp.png", "100mp.png", "225mp.png"])
def test_costly_images_are_refused_from_their_header(name, bad_files):
    started = time.perf_counter()
    with open(bad_files[name], "rb") as f, pytest.raises(InputError, match="limit"):
        read_grey(f)
    assert time.perf_counter() - started < 0.5


@pytest.mark.slow
def test_a_huge_file_is_refused_by_its_size_under_a_memory_limit(tmp_path, model_file):
    """3 GiB (sparse) read whole would end in a MemoryError under a limit of 1 GiB."""
    huge = tmp_path / "huge.jpg"
    write_sparse(huge, 3 * 2**30)
    code = ("import resource, runpy, sys\n"
            "resource.setrlimit(resource.RLIMIT_DATA, (2**30, resource.RLIM_INFINITY))\n"
            "runpy.run_module('app.cli', run_name='__main__', alter_sys=True)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, "--model", str(model_file), str(huge)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"error: {huge}: 3,072 MB is over the 10 MB limit for a picture\n"
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_a_bad_input_among_good_ones_costs_no_time(model_file, bad_files, good_png):
    """A FIFO would block a naive reader forever; a gigabyte would take seconds to read. Both
    are refused from what the file system says."""
    started = time.monotonic()
    result = run_cli("--model", model_file, bad_files["fifo.png"], bad_files["1-gib.jpg"],
                     good_png)
    assert result.returncode == 1 and result.stdout.startswith(f"{good_png}: ")
    assert time.monotonic() - started < 30


def test_predict_runs_where_tensorflow_cannot_be_imported(model_file, good_png):
    result = run_cli("--model", model_file, good_png)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good_png}: 7 (")
    code = WITHOUT_TRAINING_PACKAGES + "import tensorflow\n"
    failed = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True,
                            text=True)
    assert "import of tensorflow halted" in failed.stderr, "the blocker does block TensorFlow"


def test_predict_writes_no_telemetry(tmp_path, model_file, good_png):
    """ONNX Runtime would record an event with a device id under ~/.cache/Microsoft for an
    uploader: nothing at all is written under the home folder."""
    home = tmp_path / "home"
    home.mkdir()

    result = run_cli("--model", model_file, good_png, home=home)

    assert result.returncode == 0, result.stderr
    assert list(home.rglob("*")) == []


def test_a_model_with_a_fixed_batch_of_one_gives_the_same_answers(tmp_path, model_file,
                                                                   model_variants, good_png):
    """A batch size fixed at 1 in the graph: the pictures are run one at a time."""
    inputs = [good_png]
    for i, digit in enumerate(mnist_form_digits(5, seed=6)[0]):
        inputs.append(tmp_path / f"{i}.png")
        Image.fromarray(255 - digit).save(inputs[-1])
    inputs.append(good_png)

    fixed = run_cli("--json", "--model", model_variants["fixed-batch"], *inputs)
    dynamic = run_cli("--json", "--model", model_file, *inputs)

    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout) == json.loads(dynamic.stdout)
    assert len(json.loads(fixed.stdout)) == 7


def test_a_model_with_a_fixed_batch_of_32_is_refused_in_one_line(model_variants, good_png):
    result = run_cli("--model", model_variants["batch-of-32"], good_png)

    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.endswith("the model takes batches of exactly 32 pictures; export it with a free "
                         "batch size, or a batch of 1")


def test_a_model_without_its_softmax_is_refused_in_one_line(model_variants, good_png):
    result = run_cli("--model", model_variants["logits"], good_png)

    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert re.search(r"its outputs are not probabilities \(for a blank picture, outputs from "
                     r".* summing to .*\): export it with its final softmax", line), line


def test_nan_is_never_printed(tmp_path, model_variants, good_png):
    """A model that gives NaN for digits, though not for the pictures it is checked on at
    load: one line that says so, and no answer printed as if it were one."""
    result = run_cli("--model", model_variants["nan-for-digits"], good_png)

    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "nan-for-digits.onnx gave no probabilities for 1 of 1 pictures (NaN" in line


def test_missing_model_is_one_line(tmp_path, good_png):
    result = run_cli("--model", tmp_path / "nowhere.onnx", good_png)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "nowhere.onnx" in result.stderr


def copy_model(model_dir, target, metadata=None, model_bytes=None):
    """The fixture's ONNX model (or `model_bytes`) in `target`, its embedded metadata changed by
    `metadata(meta)` (None: no metadata at all)."""
    import onnx

    target.mkdir(exist_ok=True)
    path = target / "model.onnx"
    proto = onnx.load_from_string(model_bytes or (model_dir / "model.onnx").read_bytes())
    meta = json.loads(onnx_metadata(model_dir / "model.onnx"))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    if metadata is not None:
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata(meta)))
    onnx.save(proto, str(path))
    return path


def onnx_metadata(path):
    import onnx

    return next(p.value for p in onnx.load(str(path)).metadata_props if p.key == METADATA_KEY)


def changed(**changes):
    """A function that returns the metadata with `changes` applied (None: the key removed)."""
    def apply(meta):
        for dotted, value in changes.items():
            node, *path = meta, *dotted.split("__")
            for key in path[:-1]:
                node = node[key]
            if value is None:
                node.pop(path[-1])
            else:
                node[path[-1]] = value
        return meta
    return apply


@pytest.mark.parametrize("metadata, message", [
    (None, "the model carries no metadata"),
    (changed(prepare="sketch"), "its metadata's prepare: input should be 'digit', 'clothing' or "
                                "'picture'"),
    (changed(class_names=DIGITS[:3]), "gives 10 outputs but .* names 3 classes"),
    (changed(refusal=None), "its metadata's refusal: field required"),
    (changed(refusal__kind="uncertainty"), "refusal.uncertainty.threshold: field required"),
    (changed(input_shape=[28, 28, 3]), r"takes tensor\(float\) of shape .*28, 28, 1.*; its "
                                       r"metadata says float pictures of \['N', 28, 28, 3\]"),
    (changed(class_names=["0", "0"] + DIGITS[2:]), "holds the same name twice"),
], ids=["no-metadata", "unknown-prepare", "too-few-names", "no-refusal", "no-threshold",
        "colour-input", "duplicate-names"])
def test_metadata_that_does_not_fit_the_model_is_one_line(tmp_path, model_dir, good_png,
                                                          metadata, message):
    model = copy_model(model_dir, tmp_path / "m", metadata)
    result = run_cli("--model", model, good_png)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and re.search(message, result.stderr), result.stderr


def test_a_model_of_another_shape_is_refused_at_load(tmp_path, model_dir, good_png):
    """A model that takes flat (784,) vectors: refused by the check of its input, not by a
    shape error at the first prediction."""
    import keras

    from stages.export import export_onnx

    flat = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    export_onnx(flat, tmp_path / "flat.onnx", {})
    model = copy_model(model_dir, tmp_path / "m", lambda meta: meta,
                       (tmp_path / "flat.onnx").read_bytes())  # the digits' metadata
    result = run_cli("--model", model, good_png)
    assert result.returncode == 1
    assert "the model takes tensor(float) of shape" in result.stderr and "784" in result.stderr


def test_damaged_model_file_is_one_clear_error(tmp_path, model_dir, good_png):
    model = tmp_path / "model.onnx"
    model.write_bytes((model_dir / "model.onnx").read_bytes()[:2000])
    result = run_cli("--model", model, good_png)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "cannot load the model" in result.stderr


@pytest.mark.parametrize("args", [[], ["--top", "0", "x.png"], ["--top", "two", "x.png"]])
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(args)
    assert exit.value.code == 2


def test_a_picture_with_no_digit_is_answered_not_a_digit(tmp_path, capsys, model_file, good_png):
    dash = tmp_path / "dash.png"
    dash.write_bytes(canvas_png([[(50, 150), (230, 140)]]))
    status, out, err = run_main(capsys, "--model", model_file, good_png, dash)
    assert status == 0 and err == "", "refusing is an answer, not an error"
    assert out.splitlines()[1] == f"{dash}: not a digit (a dash)"


def test_the_debug_view_tool_shows_what_was_taken_for_the_page_and_the_ink(tmp_path, model_file,
                                                                           good_png):
    """docs/debug_view.py, as docs/photos.md runs it: a photo of a digit on a sheet lying on a
    desk is drawn with the sheet and the ink outlined beside the 28x28, its answer under it; a
    file that is no picture is a line on stderr (and exit status 1), not a crash."""
    photo, text = tmp_path / "photo.png", tmp_path / "notes.png"
    Image.fromarray(make_photo(7, "sheet-in-frame", 3).image).save(photo)
    text.write_text("not a picture")
    done = subprocess.run([sys.executable, REPO / "docs/debug_view.py", tmp_path / "seen", photo,
                           good_png, text, "--model", model_file], capture_output=True, text=True)
    assert re.match(rf"{re.escape(str(photo))}: \d \(\d+\.\d%\)", done.stdout)
    assert done.returncode == 1, "a file it could not draw"
    assert done.stderr.startswith(f"error: {text}: not a picture (")
    assert done.stderr.count("\n") == 1
    with Image.open(tmp_path / "seen/001-photo.png.png") as view:
        pixels = np.asarray(view.convert("RGB")).reshape(-1, 3)
    blue, red = (40, 110, 255), (230, 30, 30)  # docs/debug_view.py's colours
    assert (pixels == blue).all(axis=1).sum() > 100, "the sheet is outlined"
    assert (pixels == red).all(axis=1).sum() > 50, "the ink is boxed"
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == [
        "001-photo.png.png", "002-seven.png.png"]
