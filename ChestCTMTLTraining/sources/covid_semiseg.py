"""COVID-SemiSeg slices (8-bit, lung-cropped) with doctor, multi-class or pseudo infection masks."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ChestCTMTLLib.representation import Representation, geometry_for_image, load_gray8
from ChestCTMTLLib.results import LESION_TYPES

from .base import IMAGE_EXTS, SampleSet, build_set, class_index, log, mask_to_model, split_items, type_index


def load_covid_semiseg(spec: dict, split: str, rep: Representation, root: Path,
                       lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    """COVID-SemiSeg folder with Imgs/ and GT/: kind doctor (0/255), multiclass (0/1/2), pseudo (0..255)."""
    folder = root / spec["path"]
    kind = spec.get("kind", "doctor")
    imgs_dir, gt_dir = folder / "Imgs", folder / "GT"
    if not imgs_dir.is_dir() or not gt_dir.is_dir():
        raise FileNotFoundError("COVID-SemiSeg folder %s needs Imgs/ and GT/" % folder)
    t = type_index(spec.get("lesion_type", "covid-infection"), lesion_types)
    weight = float(spec.get("weight_seg", 0.5 if kind == "pseudo" else 1.0))
    cls = class_index(spec.get("class", "covid"))
    files = [p for p in imgs_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS]
    files = split_items(files, spec.get("holdout"), split)
    rows, skipped = [], []
    for p in files:
        gts = [g for g in gt_dir.glob(p.stem + ".*") if g.suffix.lower() in IMAGE_EXTS]
        try:
            if not gts:
                raise FileNotFoundError("no mask for %s in %s" % (p.name, gt_dir))
            img = load_gray8(p)
            from PIL import Image

            with Image.open(gts[0]) as im:
                gt = np.asarray(im.convert("L")).astype(np.float32)
            if gt.shape != img.shape:
                raise ValueError("mask %s is %s but image is %s" % (gts[0].name, gt.shape, img.shape))
            if kind == "multiclass":
                unit = (gt > 0).astype(np.float32)  # 1 GGO, 2 consolidation -> infection
            elif kind == "pseudo":
                unit = gt / 255.0
            else:
                unit = (gt >= 128).astype(np.float32)
            geom = geometry_for_image(img.shape, rep.input_size)
            mask = np.zeros((len(lesion_types), rep.input_size, rep.input_size), np.uint8)
            mask[t] = mask_to_model(unit, geom)
            present = np.ones(len(lesion_types), bool)  # COVID slices: no nodule annotations,
            # but also no tumours in this collection - nodule-mass is known-absent
            if not spec.get("other_types_absent", True):
                present[:] = False
                present[t] = True
            x = geom.to_model(torch.from_numpy(img))[0, 0].numpy()
            rows.append({"image": x, "cls": cls, "mask": mask, "present": present, "weight": weight,
                         "id": "%s/%s" % (spec.get("name", kind), p.name),
                         "meta": {"image": str(p), "mask": str(gts[0]), "kind": kind,
                                  "geometry": geom.to_dict()}})
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", p, e)
            skipped.append("%s: %s" % (p, e))
    return build_set(spec.get("name", "covid-" + kind), split, rep, rows, len(lesion_types), skipped=skipped)

