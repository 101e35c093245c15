"""Export a training checkpoint (``checkpoints/last.pt`` or a stage checkpoint) as a model folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ChestCTMTLLib.model import ModelConfig, MultiTaskNet
from ChestCTMTLLib.modelio import save_model_folder


def export_checkpoint(checkpoint, output, model_id: Optional[str] = None, card_extra=None) -> Path:
    """Rebuild the network from the checkpoint's architecture and write ``output`` atomically."""
    from .config import representation_of
    from .train import make_card

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError("checkpoint %s does not exist" % checkpoint)
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "model" not in ck or "architecture" not in ck:
        raise ValueError("%s is not a ChestCTMTLTraining checkpoint" % checkpoint)
    config = ModelConfig.from_dict(ck["architecture"])
    model = MultiTaskNet(config)
    model.load_state_dict(ck["model"])
    cfg = ck.get("config") or {}
    card = {}
    if cfg:
        summary = {"steps": ck.get("step"), "elapsed_s": None, "seconds_per_step": None,
                   "device": "cpu", "world_size": 1}
        card = make_card(cfg, [], summary)
        card.pop("training_data", None)
    if model_id:
        card["id"] = model_id
    if card_extra:
        extra = card_extra if isinstance(card_extra, dict) else json.loads(Path(card_extra).read_text())
        card.update(extra)
    rep = representation_of(cfg) if cfg else None
    return save_model_folder(model, config, card, output, representation=rep)
