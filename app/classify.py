"""What predict and the server share: a picture in, the model's answer out.

A picture is decoded within the limits of app/decode.py, brought to the form of the model's
data set by app/transform.py, and classified by app/model.py; the answer is the same object
for the command line (`--json`) and for HTTP.
"""

import math

import numpy as np

from app.decode import read_grey
from app.transform import to_model_form


def model_form(file, dataset, deadline=math.inf):
    """A picture (a binary file) -> 28x28 uint8 in the form of `dataset`'s images. Raises an
    InputError (app.transform) naming what is wrong with it, or PastDeadline."""
    return to_model_form(read_grey(file, deadline), dataset)


def ranked(probs, names, k):
    """The k most likely classes, most likely first: [{"digit", "probability"}]."""
    return [{"digit": names[i], "probability": round(float(probs[i]), 6)}
            for i in np.argsort(-probs, kind="stable")[:k]]


def answer(probs, names, k):
    """{"digit", "probability", "top"}: the best class and the k best."""
    top = ranked(probs, names, k)
    return {**top[0], "top": top}


def classify(file, classifier, deadline=math.inf):
    """The answer for one picture, every class ranked (the page draws a bar for each)."""
    pixels = model_form(file, classifier.dataset, deadline)
    probs = classifier.probabilities(pixels[np.newaxis])[0]
    return answer(probs, classifier.class_names, len(classifier.class_names))
