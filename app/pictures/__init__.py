"""The picture pipeline, apart from HTTP: a picture file decoded within bounds (decode), the digit
found in it and brought to MNIST form (digit), any other picture fitted to a model (fit), and
"not a digit" (refusal)."""
