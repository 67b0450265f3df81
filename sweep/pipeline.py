"""What the sweep knows about this project's pipeline, each fact once. Everything else in the
package is plain DVC and Ray: a change to the pipeline's layout is a change here."""

import re

# The metric that ranks trials: (file, key) as `dvc exp show --json` reports them.
TEST_METRIC = ("metrics/test.json", "test_accuracy")

# The params file `-S` writes by default, and the keys that say how many CPUs a trial uses: the
# model family, then that family's TensorFlow thread count (0: all of the machine's cores).
PARAMS_FILE = "params.yaml"
FAMILY_KEY = "train.model"
THREADS_KEY = "train.{family}.threads"

# What train logs when it ends ("train: trained 20 epochs in 10.1 s"): the training time a
# trial reports. Timings are not DVC outputs, so they are read from the run's log.
TRAINED_LINE = re.compile(r"trained (\d+) epochs in ([0-9.]+) s")

# How a stage states an expected failure, in one line on stderr ("error: params.yaml: ...");
# DVC's own failures start with "ERROR: ".
STAGE_ERROR_PREFIX = "error: "
DVC_ERROR_PREFIX = "ERROR: "
