"""An interpreter with only what a fresh 3D Slicer bundles, for tests of the module's path.

A fresh Slicer (5.8 to 5.12) ships Python with numpy, scipy, SimpleITK, pillow, pydicom and VTK
(MRML from its own build; here: the slicer-core wheel), but not torch, tqdm, scikit-image,
safetensors, MONAI, scikit-learn or matplotlib: the PyTorch extension installs torch only when a
module asks. Code that imports one of those where Slicer runs it fails only in a user's Slicer,
so these tests run it in a *real* environment without them, not behind an import hook:
``python -S`` (no site-packages) with ``PYTHONPATH`` holding symbolic links to the allowed
packages of the test venv only. ``importlib.util.find_spec("torch")`` is ``None`` there, exactly
as in a fresh Slicer, so "is it installed?" checks behave as they do for a user.
"""
from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]

# What a fresh Slicer's Python can import (top-level names in site-packages), plus their
# compiled-library folders. pydicom is bundled for Slicer's DICOM module.
SLICER_BUNDLED = ("numpy", "numpy.libs", "scipy", "scipy.libs", "SimpleITK", "PIL", "pillow.libs",
                  "pydicom", "vtk.py", "vtkmodules", "slicer", "slicer_core", "typing_extensions.py",
                  "packaging")
# Installed in the test venv but never in a fresh Slicer: must not be importable here.
NOT_IN_SLICER = ("torch", "tqdm", "skimage", "safetensors", "monai", "sklearn", "matplotlib",
                 "onnxruntime", "onnx")


def _site_packages() -> Path:
    for candidate in site.getsitepackages():
        if (Path(candidate) / "numpy").is_dir():
            return Path(candidate)
    raise RuntimeError("no site-packages with numpy found for %s" % sys.executable)


def make_site(folder: Path) -> Path:
    """A folder of symbolic links to the Slicer-bundled packages of this venv (idempotent)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = _site_packages()
    for name in SLICER_BUNDLED:
        target = source / name
        link = folder / name
        if target.exists() and not link.exists():
            link.symlink_to(target)
    # slicer-core's own .pth / dist-info are not needed: `import slicer` finds the package folder.
    return folder


def environment(folder: Path, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment variables for ``python -S`` that sees the repository and the bundled packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    paths = [str(REPO / "ChestCTMTL"), str(REPO), str(make_site(folder))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def command(args: Sequence[str]) -> List[str]:
    """``python -S`` + ``args`` (``-S``: site-packages, and so torch, are not on the path)."""
    return [sys.executable, "-S"] + list(args)


def run(args: Sequence[str], folder: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -S args`` in the Slicer-like environment (text output captured)."""
    return subprocess.run(command(args), env=environment(folder, kwargs.pop("env", None)),
                          capture_output=True, text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO),
                          **kwargs)
