"""Online serving: FastAPI router, dynamic-length batcher, core-pinned ONNX Runtime workers.

Never imports torch or transformers.
"""
