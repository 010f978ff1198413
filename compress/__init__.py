"""Offline compression pipeline (FastFormers): fine-tune, export, fuse, quantize, evaluate.

Importing this package must not import torch: `contract.artifact` and `contract.encoding` are read by
the serving path too. Stages that need torch import it inside their own modules.
"""
