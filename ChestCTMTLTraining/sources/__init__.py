"""Data sources: one module per source kind, joined in the one ``ADAPTERS`` registry.

A config's ``sources:`` entry names its adapter with ``type:``; :func:`load_source` runs it for
one split and :func:`load_sources` for a list. Adapters import only :mod:`.base` and
:mod:`.volumes` (and :mod:`ChestCTMTLTraining.lidc`), never the pack or the trainer, so the
package has no import cycle (``Testing/test_training_imports.py`` checks it).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import LESION_TYPES

from .base import SampleSet, log
from .covid_ct_md import load_covid_ct_md
from .covid_semiseg import load_covid_semiseg
from .covid_semiseg_types import load_covid_semiseg_types, with_type_channels  # noqa: F401
from .image_folder import load_image_folder
from .lidc_dicom import load_lidc_dicom
from .lidc_nodule_vois import load_lidc_nodule_vois
from .msd_h5 import load_msd_h5
from .sarscov2_ct import load_sarscov2_ct
from .volume_pair import load_volume_pair

ADAPTERS = {
    "covid_semiseg": load_covid_semiseg,
    "covid_semiseg_types": load_covid_semiseg_types,
    "image_folder": load_image_folder,
    "lidc_dicom": load_lidc_dicom,
    "volume_pair": load_volume_pair,
    "msd_h5": load_msd_h5,
    "sarscov2_ct": load_sarscov2_ct,
    "covid_ct_md": load_covid_ct_md,
    "lidc_nodule_vois": load_lidc_nodule_vois,
}


def load_source(spec: dict, split: str, rep: Representation, root: Path,
                lesion_types: Sequence[str] = LESION_TYPES) -> SampleSet:
    kind = spec.get("type")
    if kind not in ADAPTERS:
        raise ValueError("unknown source type %r (known: %s)" % (kind, sorted(ADAPTERS)))
    out = ADAPTERS[kind](spec, split, rep, Path(root), lesion_types)
    out.name = spec.get("name", out.name)
    return limit_samples(out, spec.get("max_samples"))


def limit_samples(s: SampleSet, limit: Optional[int]) -> SampleSet:
    """At most ``limit`` samples, spread evenly over the set (quick evaluations, tests)."""
    if limit and len(s) > int(limit):
        return subset(s, np.linspace(0, len(s) - 1, int(limit)).round().astype(int))
    return s


def subset(s: SampleSet, idx) -> SampleSet:
    idx = np.asarray(idx)
    return SampleSet(s.name, s.split, s.images[idx], s.classes[idx], s.masks[idx], s.mask_present[idx],
                     s.seg_weight[idx], [s.ids[i] for i in idx], s.kind,
                     [s.meta[i] for i in idx] if s.meta else [], s.skipped, s.volumes)


def load_sources(specs: Sequence[dict], split: str, rep: Representation, root: Path,
                 lesion_types: Sequence[str] = LESION_TYPES) -> List[SampleSet]:
    """Each spec's set (empty ones dropped), unpadded: a set with infection-type channels keeps
    them and the others do not (:func:`with_type_channels` evens them out for batching)."""
    out = []
    for spec in specs:
        s = load_source(spec, split, rep, root, lesion_types)
        log.info(s.summary())
        if len(s):
            out.append(s)
    return out

