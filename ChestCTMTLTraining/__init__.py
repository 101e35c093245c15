"""Headless training, evaluation, export and prediction for ChestCTMTL models.

``python -m ChestCTMTLTraining {train,evaluate,export,predict,ablation}``; configs are YAML files
in ``ChestCTMTLTraining/configs`` (packaged) or anywhere on disk.
"""
from __future__ import annotations

__all__ = ["__version__"]

from ChestCTMTLLib import __version__  # noqa: E402
