"""What the sweep knows about this project's pipeline, each fact once: a change to the pipeline's
layout is a change here. The rest of the package is plain DVC and Ray."""

# The metric that ranks trials: (file, key), as DVC's metrics name them.
TEST_METRIC = ("metrics/test.json", "test_accuracy")

# The params file `-S` writes by default, and the keys that say how many CPUs a trial uses: the
# model family, then that family's TensorFlow thread count (0: all of the machine's cores).
PARAMS_FILE = "params.yaml"
FAMILY_KEY = "train.model"
THREADS_KEY = "train.{family}.threads"

# The training time train writes, {"train_seconds": 10.1}: git-ignored and no DVC output
# (it differs on every run), so it stays in the trial's clone, where the trial reads it.
TRAINING_TIME = ("metrics/timing.json", "train_seconds")

# How a stage states an expected failure: one line on stderr ("error: params.yaml: ...").
STAGE_ERROR_PREFIX = "error: "
