"""Where things live: the data root, the extension's resources, the sample-data cache.

Resources are found relative to this file so the same code works from a source checkout, a pip
(editable) install and an installed Slicer extension, without `slicer.modules` being registered.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

LIB_DIR = Path(__file__).resolve().parent
MODULE_DIR = LIB_DIR.parent  # ChestCTMTL/


def repository_root() -> Optional[Path]:
    """The source checkout's root, or None inside an installed extension."""
    candidate = MODULE_DIR.parent
    return candidate if (candidate / "pyproject.toml").is_file() else None


def resources_dir() -> Path:
    """Extension-level resources (model registry, models, terminology).

    In a checkout they are at <repo>/Resources; CMake installs them next to the module's
    scripts as ChestCTMTL/Resources/Extension, where this also looks.
    """
    env = os.environ.get("CHESTCTMTL_RESOURCES")
    if env:
        return Path(env)
    for candidate in (MODULE_DIR / "Resources" / "Extension", MODULE_DIR.parent / "Resources"):
        if (candidate / "models.json").is_file():
            return candidate
    return MODULE_DIR.parent / "Resources"


def data_root() -> Path:
    """Real data: $CHESTCTMTL_DATA, else ../shared/data next to the repository."""
    env = os.environ.get("CHESTCTMTL_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (MODULE_DIR.parent.parent / "shared" / "data").resolve()


def cache_dir() -> Path:
    """Downloaded sample data: $CHESTCTMTL_CACHE, else ~/.cache/chestctmtl."""
    env = os.environ.get("CHESTCTMTL_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "chestctmtl"
    return path.expanduser()


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through a temporary sibling renamed over it (never half-written)."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding=encoding) as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
