"""Model files the app must serve right or refuse at load, made from the fixture's real export
(tests/conftest.py's `model_dir`) by editing its ONNX graph:

- fixed-batch: the same model with its batch size fixed at 1, as some exporters write it;
- batch-of-32: fixed at 32, which one picture cannot fill;
- logits: the same model without its final softmax, giving scores, not probabilities;
- nan-for-digits: the same model, plus NaN in every output for a picture whose ink adds up like
  a digit's (10,000 to 90,000): the probe pictures a model is checked on at load pass;
- fails-alone: the same model, its input first reshaped to rows of three pictures and back: it
  runs on the three probe pictures at load, and fails in ONNX Runtime on a picture alone;
- slow-to-load: the same answers, plus 0 times a sum of constants that ONNX Runtime computes
  as it loads the model (constant folding: four products of 2048x2048 matrices, a second or
  more).
"""

import pytest


def fixed_batch(size):
    def edit(model):
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = size  # replaces the free dim_param
    return edit


def without_softmax(model):
    [softmax] = [n for n in model.graph.node if n.op_type == "Softmax"]
    for node in model.graph.node:  # whatever read the probabilities now reads the scores
        node.input[:] = [softmax.input[0] if name == softmax.output[0] else name
                         for name in node.input]
    model.graph.output[0].name = softmax.input[0]
    model.graph.node.remove(softmax)


def nan_for_digits(model):
    """output + 0 * log(-(S - 10000) * (90000 - S)) for S the sum of the picture's pixels: 0
    for most pictures, NaN (the log of a negative number) where S is between the two."""
    from onnx import TensorProto, helper

    picture, probabilities = model.graph.input[0].name, model.graph.output[0].name
    [last] = [n for n in model.graph.node if probabilities in n.output]
    last.output[:] = ["probabilities"]
    constants = {"axes": ([1, 2], TensorProto.INT64), "low": ([10000.0], TensorProto.FLOAT),
                 "high": ([90000.0], TensorProto.FLOAT), "zero": ([0.0], TensorProto.FLOAT)}
    for name, (values, kind) in constants.items():
        model.graph.initializer.append(helper.make_tensor(name, kind, [len(values)], values))
    model.graph.node.extend([
        helper.make_node("ReduceSum", [picture, "axes"], ["sum"], keepdims=1),
        helper.make_node("Sub", ["sum", "low"], ["above"]),
        helper.make_node("Sub", ["high", "sum"], ["below"]),
        helper.make_node("Mul", ["above", "below"], ["inside"]),
        helper.make_node("Neg", ["inside"], ["outside"]),
        helper.make_node("Log", ["outside"], ["log"]),
        helper.make_node("Mul", ["log", "zero"], ["nothing_or_nan"]),
        helper.make_node("Reshape", ["nothing_or_nan", "column"], ["per_picture"]),
        helper.make_node("Add", ["probabilities", "per_picture"], [probabilities]),
    ])
    model.graph.initializer.append(helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1]))


def fails_alone(model):
    from onnx import TensorProto, helper

    picture = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = ["regrouped" if name == picture else name for name in node.input]
    model.graph.initializer.append(helper.make_tensor("rows_of_three", TensorProto.INT64, [2],
                                                      [-1, 3 * 28 * 28]))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([helper.make_node("Shape", [picture], ["shape"]),
                             helper.make_node("Reshape", [picture, "rows_of_three"], ["rows"]),
                             helper.make_node("Reshape", ["rows", "shape"], ["regrouped"]),
                             *nodes])


def slow_to_load(model):
    from onnx import TensorProto, helper

    probabilities = model.graph.output[0].name
    [last] = [n for n in model.graph.node if probabilities in n.output]
    last.output[:] = ["probabilities"]
    model.graph.initializer.extend([
        helper.make_tensor("small", TensorProto.FLOAT, [1], [1e-3]),
        helper.make_tensor("square", TensorProto.INT64, [2], [2048, 2048]),
        helper.make_tensor("nothing", TensorProto.FLOAT, [], [0.0])])
    model.graph.node.extend([
        helper.make_node("Expand", ["small", "square"], ["power0"]),
        *(helper.make_node("MatMul", [f"power{i}", f"power{i}"], [f"power{i + 1}"])
          for i in range(4)),
        helper.make_node("ReduceSum", ["power4"], ["sum"], keepdims=0),
        helper.make_node("Mul", ["sum", "nothing"], ["zero"]),
        helper.make_node("Add", ["probabilities", "zero"], [probabilities])])


EDITS = {"fixed-batch": fixed_batch(1), "batch-of-32": fixed_batch(32), "logits": without_softmax,
         "nan-for-digits": nan_for_digits, "fails-alone": fails_alone,
         "slow-to-load": slow_to_load}


@pytest.fixture(scope="session")
def model_variants(model_dir, tmp_path_factory):
    """{name: path} of each edited model, its metadata kept."""
    import onnx

    directory = tmp_path_factory.mktemp("model-variants")
    paths = {}
    for name, edit in EDITS.items():
        model = onnx.load(str(model_dir / "model.onnx"))
        edit(model)
        onnx.checker.check_model(model)
        paths[name] = directory / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    return paths
