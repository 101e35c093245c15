"""Image folders whose sub-folder names the class (IQ-OTH/NCCD and the like)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ChestCTMTLLib.representation import Representation, geometry_for_image, load_gray8
from ChestCTMTLLib.results import CLASS_NAMES, LESION_TYPES

from .base import IMAGE_EXTS, SampleSet, build_set, class_index, log, split_items


def load_image_folder(spec: dict, split: str, rep: Representation, root: Path,
                      lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    """Class = sub-folder name, mapped through ``mapping`` (None drops the folder)."""
    folder = root / spec["path"]
    if not folder.is_dir():
        raise FileNotFoundError("image folder %s does not exist" % folder)
    mapping = spec.get("mapping") or {}
    lesion_free = set(spec.get("lesion_free", []))
    rows, skipped = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        target = mapping.get(sub.name, sub.name if sub.name in CLASS_NAMES else None)
        cls = class_index(target)
        if cls < 0:
            log.info("image folder %s: class folder %s not mapped, dropped", folder, sub.name)
            continue
        files = [p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTS]
        for p in split_items(files, spec.get("holdout"), split):
            try:
                img = load_gray8(p)
                x, geom = None, geometry_for_image(img.shape, rep.input_size)
                x = geom.to_model(torch.from_numpy(img))[0, 0].numpy()
            except (OSError, ValueError) as e:
                log.warning("skipping %s: %s", p, e)
                skipped.append("%s: %s" % (p, e))
                continue
            present = np.full(len(lesion_types), sub.name in lesion_free, bool)
            rows.append({"image": x, "cls": cls, "present": present,
                         "mask": np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8),
                         "id": "%s/%s/%s" % (spec.get("name", folder.name), sub.name, p.name),
                         "meta": {"image": str(p), "folder": sub.name, "geometry": geom.to_dict()}})
    return build_set(spec.get("name", folder.name), split, rep, rows, len(lesion_types), skipped=skipped)

