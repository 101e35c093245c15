"""The Python packages the analysis needs, checked without importing them and installed only
after the user agrees.

A fresh Slicer (5.8 to 5.12) bundles numpy, scipy and SimpleITK but not torch or safetensors
(the module's own path uses scipy where scikit-image would do, so that is never asked for). torch goes through the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA
build that matches the driver); the rest through ``slicer.packaging.pip_ensure`` where it exists
(Slicer 5.12's ``Base/Python/slicer/packaging.py``: ``pip_ensure(requirements, constraints=None,
skip_packages=None, prompt_install=True, prompt_restart=True, requester=None,
skip_in_testing=True, show_progress=True)``, with its own progress dialog), else
``slicer.util.pip_install`` under a message box, because 5.8/5.10 show no progress of their own.

Checks use ``importlib.util.find_spec`` and package metadata after
``importlib.invalidate_caches()``: a package pip just installed is invisible to the import
system's cached directory listings until then.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from typing import List, Optional, Sequence, Tuple

import slicer

from ChestCTMTLLib import errors

#: (import name, pip requirement); torch's requirement None: it comes from the PyTorch extension.
REQUIREMENTS: Tuple[Tuple[str, Optional[str]], ...] = (
    ("torch", None), ("safetensors", "safetensors"), ("SimpleITK", "SimpleITK"))
MINIMUM_TORCH_VERSION = "2.0"
REQUESTER = "ChestCTMTL"


def _version_tuple(text: str) -> Tuple[int, ...]:
    """"2.1.0+cu118" -> (2, 1, 0); leading numeric parts only."""
    parts = []
    for piece in re.split(r"[.+-]", text):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def missing_packages(requirements: Optional[Sequence] = None) -> List[str]:
    """Import names of the requirements (default :data:`REQUIREMENTS`) that cannot be imported
    (nothing is imported)."""
    importlib.invalidate_caches()
    return [name for name, _ in (REQUIREMENTS if requirements is None else requirements)
            if importlib.util.find_spec(name) is None]


def installed_torch_version() -> Optional[str]:
    """The installed torch's version, read from its metadata (torch is not imported)."""
    module = sys.modules.get("torch")
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def outdated_torch(minimum: str = MINIMUM_TORCH_VERSION) -> Optional[str]:
    """The installed torch's version when it is older than ``minimum``, else None."""
    version = installed_torch_version()
    if version is None or _version_tuple(version) >= _version_tuple(minimum):
        return None
    return version


def problems(requirements: Optional[Sequence] = None) -> List[str]:
    """One line per package that is missing or too old, for the confirmation dialog."""
    lines = list(missing_packages(requirements))
    old = outdated_torch() if "torch" not in lines else None
    if old is not None:
        lines.append("torch {} or newer (installed: {})".format(MINIMUM_TORCH_VERSION, old))
    return lines


def ensure(gui_available: bool, ask_confirmation: bool = True,
           requirements: Optional[Sequence] = None) -> bool:
    """Make every requirement importable; True when they are, False when the user declined.

    Without a GUI, or with ``ask_confirmation`` False, a missing package raises
    :class:`errors.ChestCTMTLError` naming it: nothing is ever installed without asking.
    """
    needed = problems(requirements)
    if not needed:
        return True
    if not (ask_confirmation and gui_available):
        raise errors.ChestCTMTLError(
            "missing Python packages: {} (install them, or open the ChestCTMTL module in Slicer "
            "to have them installed)".format(", ".join(needed)))
    if not slicer.util.confirmOkCancelDisplay(
            "ChestCTMTL needs these Python packages, which are not installed yet:\n\n  {}\n\n"
            "Install them now? This downloads them from the internet and may take several "
            "minutes.".format("\n  ".join(needed)), windowTitle="ChestCTMTL"):
        return False
    missing = missing_packages(requirements)
    if "torch" in missing or outdated_torch() is not None:
        if not _install_torch():
            return False
    pip_requirements = [req for name, req in (REQUIREMENTS if requirements is None else requirements)
                        if name in missing and req]
    if pip_requirements:
        install_with_pip(pip_requirements)
    still = problems(requirements)
    if still:
        raise errors.ChestCTMTLError("installing {} did not succeed; restart Slicer and try again"
                                     .format(", ".join(still)))
    return True


def _install_torch() -> bool:
    """torch through the PyTorch extension; False when it declined or gave nothing."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise errors.ChestCTMTLError(
            "ChestCTMTL needs the PyTorch extension: install 'PyTorch' from the Extensions "
            "Manager, restart Slicer and try again.") from None
    if "torch" in sys.modules and outdated_torch() is not None:
        raise errors.ChestCTMTLError(
            "torch {} is loaded but ChestCTMTL needs {} or newer: update it in the PyTorch "
            "module (PyTorch Utils), restart Slicer and try again."
            .format(installed_torch_version(), MINIMUM_TORCH_VERSION))
    # installTorch runs light-the-torch ("install torch>=2.0 torchvision", which also upgrades
    # an older torch) and imports torch (SlicerPyTorch PyTorchUtils/PyTorchUtils.py); it shows
    # no progress of its own, so a status box says what the minutes are spent on
    with slicer.util.MessageDialog("Installing PyTorch for ChestCTMTL; this may take several "
                                   "minutes..."):
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=">=" + MINIMUM_TORCH_VERSION)
    importlib.invalidate_caches()
    return torch is not None


def install_with_pip(pip_requirements: List[str]) -> None:
    """pip-install with the best progress the running Slicer offers."""
    try:
        packaging = importlib.import_module("slicer.packaging")  # Slicer 5.12+
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(list(pip_requirements), prompt_install=False, requester=REQUESTER)
    else:
        with slicer.util.MessageDialog("Installing {} for ChestCTMTL; this may take several "
                                       "minutes...".format(", ".join(pip_requirements))):
            slicer.util.pip_install(" ".join(pip_requirements))
    importlib.invalidate_caches()
