"""Export of a registered version to ONNX (float and int8) and the ONNX Runtime scorer.

The export sits after training in the chain: it reads a registered version and writes its
graphs next to it in MLflow; scoring (mtl.recommend.workers) runs them instead of the torch
model when ``scoring.runtime`` asks for it.
"""
