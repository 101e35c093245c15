"""COVID-SemiSeg MultiClassInfection slices: infection split into ground-glass opacity and
consolidation, for a model with ``infection_types``.

The ground truth is a palette PNG whose *indices* are the labels (0 background, 1 ground-glass
opacity, 2 consolidation; the palette's grey levels are not). Each slice gives the usual lesion
channels (covid-infection = the union, nodule-mass known-absent as in :mod:`.covid_semiseg`)
followed by one channel per :data:`ChestCTMTLLib.model.INFECTION_TYPES`.

Why ``mask_present`` is False for the type channels: presence drives the per-channel lesion
losses and the detection boxes (``batching.detection_targets``), and neither may read the types
(boxes of GGO parts of one infected region would teach the detector a second, smaller box). The
type loss instead recognises a labelled sample by its non-empty type channels, which is exact
here: the types partition the infection on every slice, and a binary-only sample's type
channels are empty (:func:`with_type_channels`).

The 50 slices are the same images as ``LungInfection-Train/Doctor-label`` (the union equals the
doctor masks pixel for pixel). With ``pair: <that folder>`` and the doctor source's holdout rule
(``last_fraction`` 0.2) the split is decided on that folder's file stems, so every slice lands on
the same side in both sources (``Testing/test_lesion_types.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from ChestCTMTLLib.model import INFECTION, INFECTION_TYPES
from ChestCTMTLLib.representation import Representation, geometry_for_image, load_gray8
from ChestCTMTLLib.results import LESION_TYPES

from .base import (IMAGE_EXTS, TYPES_KIND, SampleSet, build_set, class_index, log, mask_to_model,
                   natural_key, read_label_map, split_items, type_index)


def _stems(folder: Path) -> set:
    return {p.stem for p in (folder / "Imgs").iterdir() if p.suffix.lower() in IMAGE_EXTS}


def split_stems(folder: Path, pair: Optional[Path], holdout, split: str) -> set:
    """The file stems of ``split``: the rule applied to the pair folder's stems (exactly the
    split :mod:`.covid_semiseg` makes of that folder with the same rule), and separately to the
    stems only ``folder`` has (they have no counterpart to agree with)."""
    own = _stems(folder)
    if pair is None:
        return set(split_items(sorted(own), holdout, split))
    paired = _stems(pair)
    return set(split_items(sorted(paired), holdout, split)) | \
        set(split_items(sorted(own - paired), holdout, split))


def load_covid_semiseg_types(spec: dict, split: str, rep: Representation, root: Path,
                             lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    folder = root / spec["path"]
    imgs_dir, gt_dir = folder / "Imgs", folder / "GT"
    if not imgs_dir.is_dir() or not gt_dir.is_dir():
        raise FileNotFoundError("COVID-SemiSeg multi-class folder %s needs Imgs/ and GT/" % folder)
    pair = root / spec["pair"] if spec.get("pair") else None
    if pair is not None and not (pair / "Imgs").is_dir():
        raise FileNotFoundError("pair folder %s (the same slices' binary labels) has no Imgs/" % pair)
    t_inf = type_index(INFECTION, lesion_types)
    n_les, n_all = len(lesion_types), len(lesion_types) + len(INFECTION_TYPES)
    cls = class_index(spec.get("class", "covid"))
    weight = float(spec.get("weight_seg", 1.0))
    keep = split_stems(folder, pair, spec.get("holdout"), split)
    rows, skipped = [], []
    for p in sorted((p for p in imgs_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.stem in keep),
                    key=natural_key):
        gts = [g for g in gt_dir.glob(p.stem + ".*") if g.suffix.lower() in IMAGE_EXTS]
        try:
            if not gts:
                raise FileNotFoundError("no mask for %s in %s" % (p.name, gt_dir))
            img = load_gray8(p)
            labels = read_label_map(gts[0], len(INFECTION_TYPES))
            if labels.shape != img.shape:
                raise ValueError("mask %s is %s but image is %s" % (gts[0].name, labels.shape, img.shape))
            geom = geometry_for_image(img.shape, rep.input_size)
            mask = np.zeros((n_all, rep.input_size, rep.input_size), np.uint8)
            mask[t_inf] = mask_to_model((labels > 0).astype(np.float32), geom)
            for k in range(len(INFECTION_TYPES)):
                mask[n_les + k] = mask_to_model((labels == k + 1).astype(np.float32), geom)
            present = np.zeros(n_all, bool)
            present[:n_les] = True  # infection labelled; no tumours in this collection
            x = geom.to_model(torch.from_numpy(img))[0, 0].numpy()
            rows.append({"image": x, "cls": cls, "mask": mask, "present": present, "weight": weight,
                         "id": "%s/%s" % (spec.get("name", "multiclass-types"), p.name),
                         "meta": {"image": str(p), "mask": str(gts[0]), "kind": TYPES_KIND,
                                  "geometry": geom.to_dict()}})
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", p, e)
            skipped.append("%s: %s" % (p, e))
    return build_set(spec.get("name", "covid-multiclass-types"), split, rep, rows, n_all, skipped=skipped)


def with_type_channels(sets: List[SampleSet]) -> List[SampleSet]:
    """Every set with the same mask channels: sets without the type channels (all sources but
    this one) get empty, not-present ones, so batches can mix them and their samples carry no
    type labels. Sets are returned unchanged when none has type channels."""
    n = max((s.masks.shape[1] for s in sets), default=0)
    out = []
    for s in sets:
        extra = n - s.masks.shape[1]
        if extra > 0:
            pad = np.zeros((len(s), extra) + s.masks.shape[2:], np.uint8)
            s.masks = np.concatenate([s.masks, pad], axis=1)
            s.mask_present = np.concatenate([s.mask_present, np.zeros((len(s), extra), bool)], axis=1)
        out.append(s)
    return out
