"""ChestCTMTL MRML adapter: analysis results <-> MRML nodes and files.

Imports slicer and vtk (from Slicer itself or from the slicer-core wheel), never Qt, so the
same node-building code runs in the Slicer GUI, in `Slicer --python-script` batch runs and in
plain Python on a headless scene (see :mod:`ChestCTMTLMRML.headless`).
"""
from __future__ import annotations
