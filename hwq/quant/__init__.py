"""Quantization: weight level schemes, the integer network (``qnet``), PTQ/QAT (``quantize``),
the integer semantics in numpy (``reference``) and the bounds that prove exact paths (``bounds``)."""
