"""Export of trained students: ONNX and GGUF, quantisation, and parity with PyTorch.

Imports `rakd`, never `flows` or `deploy`.
"""
