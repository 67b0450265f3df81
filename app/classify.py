"""What predict and the server share: a picture in, the model's answer out.

A picture is decoded within the limits of app/decode.py, brought to the form of the model's
data set by app/transform.py, and classified by app/model.py; the answer is the same object
for the command line (`--json`) and for HTTP.
"""

import math

import numpy as np

from app.decode import read_grey
from app.refusal import refusal
from app.transform import to_model_form


def model_form(file, dataset, deadline=math.inf):
    """A picture (a binary file) -> 28x28 uint8 in the form of `dataset`'s images. Raises an
    InputError (app.transform) naming what is wrong with it, or PastDeadline."""
    return to_model_form(read_grey(file, deadline), dataset)


def ranked(probs, names, k):
    """The k most likely classes, most likely first: [{"digit", "probability"}]."""
    return [{"digit": names[i], "probability": round(float(probs[i]), 6)}
            for i in np.argsort(-probs, kind="stable")[:k]]


def answer(pixels, probs, classifier, k):
    """{"digit", "probability", "refusal", "top"} for the 28x28 `pixels` the model read as
    `probs`: the best class and the k best; or, when the picture holds no digit
    (app/refusal.py), "refusal" says why in a line, and "digit" and "probability" are None.
    `top` stays, for the curious: it is what the model would have guessed."""
    top = ranked(probs, classifier.class_names, k)
    why = refusal(pixels, probs, classifier.dataset)
    if why:
        return {"digit": None, "probability": None, "refusal": why, "top": top}
    return {**top[0], "refusal": None, "top": top}


def classify(file, classifier, deadline=math.inf):
    """The answer for one picture, every class ranked (the page draws a bar for each)."""
    pixels = model_form(file, classifier.dataset, deadline)
    probs = classifier.probabilities(pixels[np.newaxis])[0]
    return answer(pixels, probs, classifier, len(classifier.class_names))
