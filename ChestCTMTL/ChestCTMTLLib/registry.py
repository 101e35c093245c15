"""The model registry and model cards, readable without torch.

A fresh Slicer has no PyTorch until the user agrees to install it, yet the panel must list the
models, show their cards and offer the install. Everything here is json + hashlib only;
``modelio`` (which builds networks) re-exports it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional, Union

from .errors import ModelError, ModelNotFoundError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
REGISTRY_FILE = "models.json"
CARD_FORMAT = "chestctmtl-model/1"


class ModelLoadError(ModelError, RuntimeError):
    """A model folder is missing, corrupt, or its card does not match its weights.

    A :class:`~ChestCTMTLLib.errors.ModelError`, so every front end reports it with the other
    model problems (and a RuntimeError, as it was first published)."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(folder) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError("model folder %s does not exist" % folder)
    path = folder / CARD_FILE
    if not path.is_file():
        raise ModelLoadError("model folder %s has no %s" % (folder, CARD_FILE))
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError("model card %s is not valid JSON: %s" % (path, e)) from None
    if not isinstance(card, dict):
        raise ModelLoadError("model card %s is not a JSON object" % path)
    missing = [k for k in ("architecture", "sha256", "id", "version") if k not in card]
    if missing:
        raise ModelLoadError("model card %s lacks %s" % (path, ", ".join(missing)))
    return card


def registry_path() -> Path:
    from .paths import resources_dir

    return resources_dir() / REGISTRY_FILE


def read_registry() -> dict:
    path = registry_path()
    if not path.is_file():
        return {"default": None, "models": {}}
    try:
        with open(path, encoding="utf-8") as f:
            reg = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError("model registry %s is not valid JSON: %s" % (path, e)) from None
    reg.setdefault("default", None)
    reg.setdefault("models", {})
    return reg


def default_model_dir() -> Path:
    """The bundled default model's folder (from Resources/models.json)."""
    path = registry_path()
    reg = read_registry()
    default = reg.get("default")
    if not default:
        raise ModelLoadError(
            "no bundled model yet: the registry %s names no default model; pass a model folder "
            "(e.g. --model DIR from `python -m ChestCTMTLTraining train --output DIR`, DIR/model)" % path)
    entry = reg["models"].get(default)
    if not entry:
        raise ModelLoadError("model registry %s names default %r but does not list it" % (path, default))
    folder = Path(entry["path"]) if isinstance(entry, dict) else Path(entry)
    if not folder.is_absolute():
        folder = path.parent / folder
    if not folder.is_dir():
        raise ModelLoadError("default model %r is registered at %s but that folder is missing"
                             % (default, folder))
    return folder


def register_model(folder, make_default: bool = True, registry: Optional[Path] = None) -> Path:
    """Add a model folder (relative to the registry when inside it) to models.json, atomically."""
    registry = Path(registry) if registry else registry_path()
    card = read_card(folder)
    reg = {"default": None, "models": {}}
    if registry.is_file():
        with open(registry, encoding="utf-8") as f:
            reg = json.load(f)
    folder = Path(folder).resolve()
    try:
        rel = folder.relative_to(registry.parent.resolve()).as_posix()
    except ValueError:
        rel = str(folder)
    reg.setdefault("models", {})[card["id"]] = {
        "path": rel, "version": card["version"], "sha256": card["sha256"],
        "backbone": card["architecture"].get("backbone"), "description": card.get("description", ""),
    }
    if make_default:
        reg["default"] = card["id"]
    tmp = registry.with_name(registry.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(reg, f, indent=2)
        f.write("\n")
    os.replace(tmp, registry)
    return registry


def available_models() -> List[dict]:
    """Registered models: id, version, path, default flag, description and a tooltip that
    states the card's measured speed (for a model list in any front end)."""
    registry = read_registry()  # problems raise ModelLoadError, a ModelError
    base = registry_path().parent
    models = []
    for model_id, entry in sorted(registry.get("models", {}).items()):
        entry = entry if isinstance(entry, dict) else {"path": entry}
        folder = Path(entry.get("path", ""))
        if not folder.is_absolute():
            folder = base / folder
        info = {"id": model_id, "version": entry.get("version", "?"), "path": str(folder),
                "default": model_id == registry.get("default"),
                "description": entry.get("description", "")}
        info["tooltip"] = model_tooltip(info, folder)
        models.append(info)
    return models


def model_tooltip(info: dict, folder: Path) -> str:
    lines = ["{} v{}".format(info["id"], info["version"])]
    if info.get("description"):
        lines.append(info["description"])
    try:
        card = read_card(folder)
    except ModelError:
        card = {}
    speed = card.get("speed") or card.get("benchmark") or (card.get("metrics") or {}).get("speed")
    if isinstance(speed, dict):
        lines.append("Measured speed: " + ", ".join("{}: {}".format(k, v) for k, v in speed.items()))
    elif speed:
        lines.append("Measured speed: {}".format(speed))
    else:
        lines.append("Measured speed: not stated in the model card")
    lines.append("Research use only.")
    return "\n".join(lines)


def resolve_model_folder(model: Union[None, str, Path] = None) -> Path:
    """None/"" -> the registry's default; a registry id -> its folder; else a folder path."""
    if model is None or model == "":
        return Path(default_model_dir())
    if isinstance(model, (str, Path)):
        for entry in available_models():
            if entry["id"] == str(model):
                return Path(entry["path"])
        folder = Path(model).expanduser()
        if not folder.exists():
            raise ModelNotFoundError("no registered model with this id and no such folder", str(model))
        return folder
    raise TypeError("model must be None, a registry id or a folder, not {!r}".format(type(model)))
