"""Training configuration: YAML files with a few sections, deep-merged over defaults.

``extends: other.yaml`` (relative to the file, or a packaged config name) lets one recipe vary
another, so the regime configs differ from ``default.yaml`` only where they must.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULTS = {
    "seed": 0,
    "data_root": None,  # None: ChestCTMTLLib.paths.data_root()
    "model": {"backbone": "fast", "input_size": 256},
    "representation": {},
    "sources": [],
    "augmentation": {"enabled": True},
    "loss": {"segmentation": "generalized_dice", "seg_bce_weight": 0.5, "reconstruction": "mse",
             "weights": {}},
    "train": {
        "regime": "joint",  # joint | single | staged
        "tasks": ["classification", "segmentation", "reconstruction", "detection"],
        "stages": [],
        "steps": 1000, "batch_size": 8, "lr": 2e-3, "weight_decay": 1e-4, "warmup_steps": 50,
        "grad_clip": 5.0, "log_every": 10, "checkpoint_every": 100, "val_every": 0,
        "threads": 2, "class_balance": True, "max_nan_steps": 20, "amp": True,
    },
    "export": {"id": None, "version": None, "description": "", "limits": [], "intended_use": ""},
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config_path(name) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / (p.name + ".yaml")):
        if cand.is_file():
            return cand
    raise FileNotFoundError("config %s not found (packaged configs: %s)"
                            % (name, ", ".join(sorted(c.name for c in CONFIG_DIR.glob("*.yaml")))))


def load_config(path, overrides: Optional[dict] = None) -> dict:
    path = resolve_config_path(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError("config %s is not a mapping" % path)
    base = DEFAULTS
    if raw.get("extends"):
        parent = Path(raw["extends"])
        parent = path.parent / parent if (path.parent / parent).is_file() else parent
        base = load_config(parent)
    cfg = deep_merge(base, {k: v for k, v in raw.items() if k != "extends"})
    cfg = deep_merge(cfg, overrides or {})
    cfg["_path"] = str(path)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    from ChestCTMTLLib.model import BACKBONES, TASKS

    t = cfg["train"]
    if t["regime"] not in ("joint", "single", "staged"):
        raise ValueError("train.regime must be joint, single or staged, got %r" % t["regime"])
    if cfg["model"].get("backbone", "fast") not in BACKBONES:
        raise ValueError("model.backbone must be one of %s" % (BACKBONES,))
    for task in t.get("tasks", []):
        if task not in TASKS:
            raise ValueError("unknown task %r (known: %s)" % (task, TASKS))
    if t["regime"] == "single" and len(t["tasks"]) != 1:
        raise ValueError("regime single needs exactly one task in train.tasks")
    if t["regime"] == "staged" and not t.get("stages"):
        raise ValueError("regime staged needs train.stages")
    for s in cfg.get("sources", []):
        if "type" not in s:
            raise ValueError("every source needs a type: %s" % s)
    from .copy_paste import CopyPasteConfig
    from .hard_negatives import HardNegativeConfig

    CopyPasteConfig.from_dict(cfg.get("copy_paste"))  # unknown keys and bad ranges fail at load
    HardNegativeConfig.from_dict(cfg.get("hard_negatives"))


def stages_of(cfg: dict):
    """[(name, tasks, steps)] for the configured regime (see :func:`stage_plan` for options)."""
    return [(s["name"], s["tasks"], s["steps"]) for s in stage_plan(cfg)]


def stage_plan(cfg: dict):
    """Stages as dicts: name, tasks, steps, and per-stage batch_size / lr / crop_size.

    ``staged`` is the paper's schedule (each stage names its tasks); ``joint`` and ``single`` may
    also list ``stages`` as phases that keep the regime's tasks but change batch size, learning
    rate or crop size (e.g. cheap 128-px crops first, full slices last).
    """
    t = cfg["train"]
    base = {"batch_size": int(t["batch_size"]), "lr": float(t["lr"]), "crop_size": t.get("crop_size"),
            "lesion_crop_p": float(t.get("lesion_crop_p", 0.5))}
    raw = t.get("stages") or []
    if t["regime"] != "staged" and not raw:
        raw = [{"name": t["regime"], "steps": t["steps"]}]
    out = []
    for i, s in enumerate(raw):
        d = dict(base)
        d.update({k: s[k] for k in ("batch_size", "lr", "crop_size", "lesion_crop_p") if k in s})
        d["name"] = s.get("name", "stage%d" % (i + 1))
        d["tasks"] = list(s["tasks"]) if (t["regime"] == "staged" or "tasks" in s) else list(t["tasks"])
        d["steps"] = int(s["steps"])
        out.append(d)
    return out


def model_tasks(cfg: dict):
    from ChestCTMTLLib.model import TASKS

    used = set()
    for _n, tasks, _s in stages_of(cfg):
        used |= set(tasks)
    return tuple(x for x in TASKS if x in used)


def representation_of(cfg: dict):
    """The input representation a config trains with (its ``representation`` + the model's input size)."""
    from ChestCTMTLLib.representation import Representation

    rep = dict(cfg.get("representation") or {})
    rep["input_size"] = int(cfg["model"].get("input_size", 256))
    return Representation.from_dict(rep)


def resolve_root(cfg: dict) -> Path:
    """The data root of a config: its ``data_root`` or the project's default (``../shared/data``)."""
    from ChestCTMTLLib.paths import data_root

    return Path(cfg["data_root"]).expanduser() if cfg.get("data_root") else data_root()
