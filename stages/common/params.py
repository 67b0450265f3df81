"""params.yaml in typed models: a stage reads `cfg.train.mlp.epochs`, checked before any work.

The file is read with DVC's own YAML loader (ruamel.yaml, YAML 1.2), so a stage sees exactly
the values DVC records in dvc.lock. Every key is declared here once, with its type and range:
an unknown key, a wrong type or an out-of-range value stops the first stage that runs, in one
line naming the key, the value and what is allowed.
"""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WrapValidator

from stages.common.layout import PARAMS
from stages.common.runner import StageError


class ParamsError(StageError):
    """A config file that cannot be read, or a key or value the pipeline does not accept."""


def read_yaml(path: Path) -> object:
    from ruamel.yaml import YAML, YAMLError

    try:
        return YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError) as error:
        message = " ".join(str(error).split())
        raise ParamsError(f"cannot read {path}: {message[:300]}") from None


def checked(model: type[BaseModel], values: object, path: Path) -> BaseModel:
    """`model` filled from `values`; ParamsError naming the first key that does not fit."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        error = e.errors()[0]
        key = ".".join(map(str, error["loc"])) or "the file"
        value = repr(error["input"])
        value = value if len(value) <= 60 else value[:57] + "..."
        if error["type"] == "missing":
            raise ParamsError(f"{path}: missing key {key}") from None
        if error["type"] == "extra_forbidden":
            raise ParamsError(f"{path}: unknown key {key} = {value}") from None
        why = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        raise ParamsError(f"{path}: {key} = {value} is not allowed: {why[0].lower()}{why[1:]}") \
            from None


class Section(BaseModel):
    # Strict: `true` is no integer, "10" no number; an int is still a float (YAML's `1` for 1.0).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def dataset_name(value: str) -> str:
    """A catalogue name or a folder under datasets/: a relative path, no `..`, nothing odd."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", value) or ".." in value.split("/"):
        raise ValueError("expected mnist, fashion-mnist or the name of a folder in datasets/ "
                         "(letters, digits, . _ - and /)")
    return value


def auto_or_size(value: object, handler: Callable) -> object:
    try:
        return handler(value)
    except ValidationError:
        raise ValueError("expected auto or a side in pixels from 8 to 512") from None


Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Fraction = Annotated[float, Field(ge=0, le=0.9)]


class Data(Section):
    dataset: Annotated[str, AfterValidator(dataset_name)]
    image_size: Annotated[Literal["auto"] | Annotated[int, Field(ge=8, le=512)],
                          WrapValidator(auto_or_size)]
    channels: Literal["auto", 1, 3]
    on_bad_file: Literal["error", "skip"]


class Preprocess(Section):
    normalization: Literal["scale", "standardize"]
    val_fraction: float = Field(gt=0, le=0.5)
    test_fraction: float = Field(gt=0, le=0.5)
    seed: Seed


class Recipe(Section):
    """How a family trains: each family has its own copy, tuned for it."""
    optimizer: Literal["adam", "adamw", "sgd"]
    learning_rate: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0, le=1)
    schedule: Literal["constant", "cosine"]
    warmup_epochs: float = Field(ge=0, le=100)
    batch_size: int = Field(ge=1, le=65_536)
    epochs: int = Field(ge=1, le=1000)
    augment: Literal["none", "shift", "affine"]
    augment_shift: int = Field(ge=0, le=8)
    augment_rotate: float = Field(ge=0, le=45)
    augment_scale: float = Field(ge=0, le=0.5)
    augment_flip: bool
    threads: int = Field(ge=0, le=256)


class MLP(Recipe):
    hidden_units: list[Annotated[int, Field(ge=1, le=8192)]] = Field(min_length=1, max_length=8)
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish"]
    dropout: Fraction


class CNN(Recipe):
    filters: list[Annotated[int, Field(ge=1, le=512)]] = Field(min_length=1, max_length=5)
    final_filters: list[Annotated[int, Field(ge=1, le=512)]] = Field(max_length=3)
    kernel_size: int = Field(ge=1, le=7)
    padding: Literal["valid", "same"]
    dense_units: int = Field(ge=0, le=4096)
    dropout: Fraction


class Train(Section):
    model: Literal["mlp", "cnn"]
    seed: Seed
    mlp: MLP
    cnn: CNN

    @property
    def recipe(self) -> MLP | CNN:
        """The section of the family `model` names: what build and fit read."""
        return getattr(self, self.model)


class Evaluate(Section):
    error_grid: int = Field(ge=1, le=100)


class Params(Section):
    data: Data
    preprocess: Preprocess
    train: Train
    evaluate: Evaluate


def load(path: Path = PARAMS) -> Params:
    """params.yaml, checked whole: a mistake anywhere stops the first stage that runs."""
    return checked(Params, read_yaml(path), path)
