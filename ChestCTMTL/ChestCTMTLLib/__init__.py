"""ChestCTMTL core: model, input representation, inference and post-processing.

Pure Python + numpy/torch/SimpleITK. Nothing here imports slicer, vtk, qt or ctk, so the same
numbers come out inside Slicer, in batch scripts and in training.
"""
from __future__ import annotations

__version__ = "0.1.0"
