"""One loaded model per front end: an ``inference.Analyzer`` cached per (model folder, device).

Importing this module needs no torch; the first :meth:`AnalyzerCache.get` imports
:mod:`ChestCTMTLLib.inference` (and so torch), after the front end made sure it is installed.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

from .options import AnalysisOptions


class AnalyzerCache:
    """Keeps the last Analyzer: the model is loaded (and its checksum verified) once, other
    options reuse the loaded weights, and a different model or device replaces it (models can
    be large on a GPU)."""

    def __init__(self, resolve_folder: Callable[[object], Path]):
        self._resolve_folder = resolve_folder
        self._lock = threading.Lock()
        self._key: Optional[tuple] = None
        self._analyzer = None

    def get(self, model=None, options: Optional[AnalysisOptions] = None):
        """``model``: None/"" (registry default), a registry id, a folder or a
        ``modelio.LoadedModel`` (used as is, not cached).

        The device is resolved first, so an unavailable GPU is reported as such even when the
        model is missing too.
        """
        from . import inference

        options = options or AnalysisOptions()
        if model is not None and hasattr(model, "model") and hasattr(model, "identity"):
            return inference.Analyzer(model, options)
        options = options.replace(device=inference.resolve_device(options.device))
        folder = self._resolve_folder(model)
        key = (str(Path(folder).resolve()), options.device)
        with self._lock:
            analyzer = self._analyzer if self._key == key else None
            if analyzer is None:
                analyzer = inference.Analyzer(folder, options)
            elif analyzer.options != options:
                analyzer = inference.Analyzer(analyzer.loaded, options)  # same weights, no reload
            self._key, self._analyzer = key, analyzer
            return analyzer
