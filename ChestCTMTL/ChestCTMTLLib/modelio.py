"""A model is a folder: ``model.safetensors`` (weights) + ``model.json`` (its card).

The card carries everything needed to rebuild and trust the network without the training
code: the architecture (:class:`~.model.ModelConfig`), the input representation, classes,
lesion types, training data, metrics, limits, version, id and the SHA-256 of the weights.
Loading refuses anything that does not add up (missing file, checksum mismatch, card that does
not describe the weights), because silently running the wrong network on a patient scan is
worse than failing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import __version__
from .model import ModelConfig, MultiTaskNet
from .representation import Representation
from .results import ModelIdentity

# The folder format, the card reading and the registry need no torch (a fresh Slicer has none
# until the user agrees to install it); they live in .registry and are re-exported here.
from .registry import (CARD_FILE, CARD_FORMAT, REGISTRY_FILE, WEIGHTS_FILE,  # noqa: F401,E402
                       ModelLoadError, default_model_dir, read_card, read_registry, register_model,
                       registry_path, sha256_file)


@dataclass
class LoadedModel:
    model: MultiTaskNet
    config: ModelConfig
    card: dict
    identity: ModelIdentity
    representation: Representation
    folder: Path
    device: str = "cpu"


def _atomic_replace_dir(tmp: Path, folder: Path) -> None:
    """Swap ``tmp`` in as ``folder`` (replacing an old one) so readers never see a half model."""
    old = None
    if folder.exists():
        old = folder.with_name(folder.name + ".old-" + uuid.uuid4().hex[:8])
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if old is not None:
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model_folder(model: MultiTaskNet, config: Optional[ModelConfig] = None,
                      card: Optional[dict] = None, folder=None,
                      representation: Optional[Representation] = None) -> Path:
    """Write weights + card into ``folder`` atomically; returns the folder.

    ``card`` holds the descriptive fields (id, version, training_data, metrics, limits,
    intended_use, representation ...); architecture, classes, lesion types, checksum and
    format are filled in here from the model itself so they cannot disagree.
    """
    from safetensors.torch import save_file

    if folder is None:
        raise ValueError("folder is required")
    config = config or model.config
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    card = dict(card or {})
    rep = representation or Representation.from_dict(card.get("representation"))
    if rep.input_size != config.input_size:
        raise ValueError("representation input_size %d != architecture input_size %d"
                         % (rep.input_size, config.input_size))
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix="." + folder.name + ".tmp-", dir=str(folder.parent)))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        digest = sha256_file(tmp / WEIGHTS_FILE)
        card.setdefault("id", folder.name)
        card.setdefault("version", __version__)
        card.update({
            "format": CARD_FORMAT,
            "architecture": config.to_dict(),
            "representation": rep.to_dict(),
            "classes": list(config.class_names),
            "lesion_types": list(config.lesion_types),
            "tasks": list(config.tasks),
            "sha256": digest,
            "weights_file": WEIGHTS_FILE,
            "parameters": int(sum(v.numel() for k, v in state.items()
                                  if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))),
        })
        with open(tmp / CARD_FILE, "w", encoding="utf-8") as f:
            json.dump(card, f, indent=2, sort_keys=False)
            f.write("\n")
        # mkdtemp makes a private (0700) folder: give the model ordinary permissions so an
        # installed extension can read it as any user
        os.chmod(tmp, 0o755)
        for name in (WEIGHTS_FILE, CARD_FILE):
            os.chmod(tmp / name, 0o644)
        _atomic_replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_model(folder, device: str = "cpu") -> LoadedModel:
    """Load and verify a model folder; the network is returned in eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    card = read_card(folder)
    weights = folder / card.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelLoadError("model folder %s has no weights file %s" % (folder, weights.name))
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise ModelLoadError("weights %s are corrupt or changed: SHA-256 %s does not match the card's %s"
                             % (weights, digest[:12], str(card["sha256"])[:12]))
    try:
        config = ModelConfig.from_dict(card["architecture"])
    except (TypeError, ValueError) as e:
        raise ModelLoadError("model card %s has an invalid architecture: %s" % (folder, e)) from None
    for key, value in (("classes", config.class_names), ("lesion_types", config.lesion_types)):
        if key in card and tuple(card[key]) != tuple(value):
            raise ModelLoadError("model card %s: %s %s disagree with the architecture's %s"
                                 % (folder, key, card[key], list(value)))
    try:
        rep = Representation.from_dict(card.get("representation"))
    except (TypeError, ValueError) as e:
        raise ModelLoadError("model card %s has an invalid representation: %s" % (folder, e)) from None
    if rep.input_size != config.input_size:
        raise ModelLoadError("model card %s: representation input size %d != architecture %d"
                             % (folder, rep.input_size, config.input_size))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError("weights %s cannot be read: %s" % (weights, e)) from None
    model = MultiTaskNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or shape:
        raise ModelLoadError(
            "model card %s does not match its weights (architecture %s): %d missing, %d unexpected, "
            "%d wrong-shape tensors (e.g. %s)" % (folder, config.backbone, len(missing), len(extra),
                                                 len(shape), (missing + extra + shape)[:3]))
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    identity = ModelIdentity(id=str(card["id"]), version=str(card["version"]), sha256=str(card["sha256"]))
    return LoadedModel(model, config, card, identity, rep, folder, str(device))


def create_untrained_model_folder(folder, config: Optional[ModelConfig] = None, seed: int = 0) -> Path:
    """A valid, randomly initialised model folder (deterministic for ``seed``) for tests."""
    config = config or ModelConfig()
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = MultiTaskNet(config)
    finally:
        torch.random.set_rng_state(gen_state)
    card = {"id": "untrained-%s-seed%d" % (config.backbone, seed), "version": __version__,
            "description": "randomly initialised weights, for tests only",
            "training_data": [], "metrics": {}, "limits": ["untrained: outputs are meaningless"]}
    rep = Representation(input_size=config.input_size)
    return save_model_folder(model, config, card, folder, representation=rep)


def update_card(folder, updates: dict) -> dict:
    """Merge descriptive fields (metrics, limits ...) into a model card, atomically.

    Fields that describe the weights (architecture, sha256, classes, lesion types, format) are
    refused here so a card can never be edited out of step with its weights.
    """
    protected = {"architecture", "sha256", "classes", "lesion_types", "format", "weights_file", "tasks"}
    bad = protected & set(updates)
    if bad:
        raise ValueError("update_card cannot change %s" % sorted(bad))
    folder = Path(folder)
    card = read_card(folder)
    card.update(updates)
    tmp = folder / (CARD_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    os.replace(tmp, folder / CARD_FILE)
    return card
