"""Where everything lives: every path and file name the stages share, named once.

dvc.yaml spells the same paths (DVC reads no Python); tests/stages/test_layout.py checks that
the two agree, and that dvc.yaml lists every module each stage imports.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
# Facts about the world, not parameters: where each dataset comes from, its hashes and class
# names. Download declares it as a dependency, so `dvc exp show` shows only what people tune.
CATALOGUE = Path("datasets.yaml")

DATA = Path("data")
RAW = DATA / "raw.npz"  # download's output: the Keras layout, uint8, plus the class names
PROCESSED = DATA / "processed"  # preprocess's output, all of it replaced at once
SPLITS = {name: PROCESSED / f"{name}.npz" for name in ("train", "val", "test")}
NORMALIZATION = PROCESSED / "normalization.json"
DATASET_INFO = PROCESSED / "dataset.json"  # which dataset, and the names of its classes

MODEL = Path("model")
KERAS_MODEL = MODEL / "model.keras"
MODEL_INFO = MODEL / "metadata.json"
ONNX_MODEL = MODEL / "model.onnx"
# The key of the JSON the ONNX file carries in its metadata; app/model.py reads the same key.
ONNX_METADATA_KEY = "pipeline_metadata"

METRICS = Path("metrics")
TRAINING_CURVES = METRICS / "train"  # DVCLive's folder: one .tsv per curve, for `dvc plots`
TEST_METRICS = METRICS / "test.json"
PER_CLASS = METRICS / "per_class.csv"
CONFUSION = METRICS / "confusion.csv"
ERRORS = METRICS / "errors.png"
EXPORT_METRICS = METRICS / "export.json"
TIMING = METRICS / "timing.json"  # git-ignored and no DVC output: timings differ on every run

# Images per batch when evaluate and export run the model: speed and memory, never results.
INFERENCE_BATCH = 1024

# The four IDX files of MNIST and Fashion-MNIST: the array each holds, and its dimensions.
IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte.gz", 3),
    "y_train": ("train-labels-idx1-ubyte.gz", 1),
    "x_test": ("t10k-images-idx3-ubyte.gz", 3),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 1),
}
IMAGE_SIDE = 28
# At most 60,000 images of 28x28 bytes in one array or IDX file: anything that declares or
# decompresses to more is refused before it is allocated.
MAX_ARRAY_BYTES = 60_000 * IMAGE_SIDE * IMAGE_SIDE
