"""The float IR: what ONNX import produces and quantization consumes.

``graph`` holds the nodes (``Affine``, ``Activation``, ``Flatten``, ``Output``) and ``Graph``;
``conv`` the convolutional nodes (``Conv2d``, ``AvgPool2d``, ``SumPool2d``, ``MaxPool2d``) over a
``window.Window``; ``activations`` the activation kinds as typed objects (float forward,
derivative, integer codes).
"""

from hwq.ir.conv import AvgPool2d, Conv2d, MaxPool2d, Pool2d, SumPool2d
from hwq.ir.graph import Activation, Affine, Flatten, Graph, Grid, Output, Quantizer, frozen_array
from hwq.ir.window import Window

__all__ = ["Activation", "Affine", "AvgPool2d", "Conv2d", "Flatten", "Graph", "Grid", "MaxPool2d", "Output",
           "Pool2d", "Quantizer", "SumPool2d", "Window", "frozen_array"]
