"""ONNX in and out: one function per op (``importer``), QAT weight grids (``grids``), the
integer network as an integer-exact ONNX graph (``exporter``)."""
