"""The float IR: what ONNX import produces and quantization consumes.

``graph`` holds the nodes (``Affine``, ``Activation``, ``Flatten``, ``Output``) and ``Graph``;
``activations`` the activation kinds as typed objects (float forward, derivative, integer codes).
"""

from hwq.ir.graph import Activation, Affine, Flatten, Graph, Grid, Output, Quantizer, frozen_array

__all__ = ["Activation", "Affine", "Flatten", "Graph", "Grid", "Output", "Quantizer", "frozen_array"]
