"""The picture pipeline, apart from HTTP: a picture file decoded within bounds (decode), the digit
found in it and brought to MNIST form (digit), "not a digit" (refusal), and what the transform
saw, drawn for a person (debug_view)."""
