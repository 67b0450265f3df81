"""Where everything lives: every path and file name the stages share, named once. dvc.yaml
spells the same paths (DVC reads no Python); tests/stages/test_layout.py checks they agree.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
# Every dataset is a folder here: the catalogue's (datasets/mnist/: where MNIST comes from and
# how it is checked) and yours (datasets/NAME/<class>/<picture>, tracked with `dvc add`).
DATASETS = Path("datasets")
CATALOGUE_ENTRY = "dataset.yaml"  # what makes a folder of datasets/ a catalogue entry

DATA = Path("data")
RAW = DATA / "raw.npz"  # download's output: uint8 pictures (N, H, W, C), labels, class names
PROCESSED = DATA / "processed"  # preprocess's output, all of it replaced at once
SPLITS = {name: PROCESSED / f"{name}.npz" for name in ("train", "val", "test")}
DATASET_INFO = PROCESSED / "dataset.json"  # which dataset, its classes, the normalisation

MODEL = Path("model")
KERAS_MODEL = MODEL / "model.keras"
MODEL_INFO = MODEL / "metadata.json"
ONNX_MODEL = MODEL / "model.onnx"

METRICS = Path("metrics")
DATA_METRICS = METRICS / "data.json"  # files skipped, test copies of training pictures left out
TRAINING_CURVES = METRICS / "train"  # DVCLive's folder: one .tsv per curve, for `dvc plots`
TEST_METRICS = METRICS / "test.json"
PER_CLASS = METRICS / "per_class.csv"
CONFUSION = METRICS / "confusion.csv"
ERRORS = METRICS / "errors.png"
EXPORT_METRICS = METRICS / "export.json"
TIMING = METRICS / "timing.json"  # git-ignored and no DVC output: timings differ on every run

# Pictures per batch when evaluate and export run the model: speed and memory, never results.
INFERENCE_BATCH = 512
