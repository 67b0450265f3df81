"""What an exported model says of itself, in the JSON its ONNX file carries under METADATA_KEY:
the pipeline's export stage writes it, and the app follows whatever model it is given by it.
One definition for both sides."""

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

METADATA_KEY = "pipeline_metadata"


class DigitChecks(BaseModel):
    """Refuse what no digit looks like (app/pictures/refusal.py, calibrated on MNIST)."""
    kind: Literal["digit"]


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """The entropy of a model's probabilities, in nats, of each row (0 when sure of one class):
    a number for one picture's."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1)
    return -(p * np.log(p)).sum(axis=-1)


class Uncertainty(BaseModel):
    """Refuse a picture the model is less sure of than of almost all its validation pictures:
    the entropy of its probabilities over `threshold`, calibrated by export on the model's own
    validation split."""
    kind: Literal["uncertainty"]
    threshold: float = Field(ge=0)


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    class_names: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=2, max_length=1000)
    dataset: str
    family: Literal["mlp", "cnn"]
    input_shape: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Literal[1, 3]]
    # How a picture becomes the model's input: digit (find the ink, fit it as MNIST's digits
    # were), clothing (as Fashion-MNIST's product photos were), picture (app/pictures/fit.py,
    # as the download stage read a folder of pictures).
    prepare: Literal["digit", "clothing", "picture"]
    refusal: DigitChecks | Uncertainty = Field(discriminator="kind")

    @model_validator(mode="after")
    def distinct_classes(self) -> "ModelInfo":
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names holds the same name twice")
        return self
