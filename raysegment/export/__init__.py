"""Export and compression: a segmenter as an ONNX graph (`graph`), run by ONNX Runtime as a drop-in
model (`runtime`), and INT8 static quantization calibrated on unlabelled images (`quantize`).

The layer sits above the engine and below the registry: it knows models and tensors, not where
artifacts are stored or who may promote them.
"""
