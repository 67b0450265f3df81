"""params.yaml in typed models: a stage reads `cfg.train.mlp.epochs`, checked before any work.

The file is read as DVC reads it (stages/yaml12.py). Every key is declared here once, with its
type and range: unknown keys, wrong types and out-of-range values stop the first stage that
runs, in one line naming the key, the value and what is allowed.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stages.layout import PARAMS
from stages.yaml12 import ParamsError, read_yaml, shown


def checked(model, values, path):
    """`model` filled from `values`; ParamsError naming the first key that does not fit."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        error = e.errors()[0]
        key = ".".join(map(str, error["loc"])) or "the file"
        if error["type"] == "missing":
            raise ParamsError(f"{path}: missing key {key}") from None
        if error["type"] == "extra_forbidden":
            raise ParamsError(f"{path}: unknown key {key} = {shown(error['input'])}") from None
        if error["type"] == "value_error":  # our own checks: their message says it all
            message = str(error["ctx"]["error"])
            value = "" if isinstance(error["input"], dict) else f" = {shown(error['input'])}"
            raise ParamsError(f"{path}: {key}{value}: {message}") from None
        raise ParamsError(f"{path}: {key} = {shown(error['input'])} is not allowed: "
                          f"{error['msg'][0].lower()}{error['msg'][1:]}") from None


class Section(BaseModel):
    # Strict: `true` is no integer, "10" no number; an int is still a float (YAML's `1` for 1.0).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Fraction = Annotated[float, Field(ge=0, le=0.9)]


class Recipe(Section):
    """How a family trains: each family has its own copy, tuned for it."""
    optimizer: Literal["adam", "adamw", "sgd"]
    learning_rate: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0, le=1)
    schedule: Literal["constant", "cosine"]
    warmup_epochs: float = Field(ge=0, le=100)
    batch_size: int = Field(ge=1, le=60_000)
    epochs: int = Field(ge=1, le=1000)
    augment: Literal["none", "shift", "affine"]
    augment_shift: int = Field(ge=0, le=4)
    augment_rotate: float = Field(ge=0, le=45)
    augment_scale: float = Field(ge=0, le=0.5)
    augment_flip: bool
    threads: int = Field(ge=0, le=256)


class MLP(Recipe):
    hidden_units: list[Annotated[int, Field(ge=1, le=8192)]] = Field(min_length=1, max_length=8)
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish"]
    dropout: Fraction


class CNN(Recipe):
    filters: list[Annotated[int, Field(ge=1, le=512)]] = Field(min_length=1, max_length=3)
    final_filters: list[Annotated[int, Field(ge=1, le=512)]] = Field(max_length=3)
    kernel_size: int = Field(ge=1, le=7)
    padding: Literal["valid", "same"]
    dense_units: int = Field(ge=0, le=4096)
    dropout: Fraction


class Data(Section):
    dataset: Literal["mnist", "fashion-mnist"]


class Preprocess(Section):
    normalization: Literal["scale", "standardize"]
    val_fraction: float = Field(gt=0, le=0.5)
    seed: Seed


class Train(Section):
    model: Literal["mlp", "cnn"]
    seed: Seed
    mlp: MLP
    cnn: CNN

    @property
    def recipe(self):
        """The section of the family `model` names: what build and fit read."""
        return getattr(self, self.model)


class Evaluate(Section):
    error_grid: int = Field(ge=1, le=100)


class Params(Section):
    data: Data
    preprocess: Preprocess
    train: Train
    evaluate: Evaluate


def load(path=PARAMS):
    """params.yaml, checked whole: a mistake anywhere stops the first stage that runs."""
    return checked(Params, read_yaml(path), path)


def save(values, path=PARAMS):
    """Write plain values as `dvc exp run -S` writes params.yaml back (ruamel, block style).
    For tests and the benchmark; no stage writes params."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(values, f)

