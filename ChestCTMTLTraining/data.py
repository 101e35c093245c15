"""The training data's public names in one place (adapters live in :mod:`.sources`).

Kept so that scripts and notebooks written against ``ChestCTMTLTraining.data`` keep working;
new code imports from :mod:`.sources` and :mod:`.loading` directly.
"""
from __future__ import annotations

from .loading import load_split
from .sources import ADAPTERS, limit_samples, load_source, load_sources, subset
from .sources.base import (IMAGE_EXTS, SampleSet, build_set, class_index, empty_set, json_default,
                           mask_to_model, natural_key, read_gt_original, split_items, type_index)
from .sources.covid_semiseg import load_covid_semiseg
from .sources.image_folder import load_image_folder
from .sources.lidc_dicom import load_lidc_dicom
from .sources.msd_h5 import load_msd_h5, mosaic
from .sources.volume_pair import load_volume_pair
from .sources.volumes import read_oriented, volume_rows

__all__ = ["ADAPTERS", "IMAGE_EXTS", "SampleSet", "build_set", "class_index", "empty_set", "json_default",
           "limit_samples", "load_covid_semiseg", "load_image_folder", "load_lidc_dicom", "load_msd_h5",
           "load_source", "load_sources", "load_split", "load_volume_pair", "mask_to_model", "mosaic",
           "natural_key", "read_gt_original", "read_oriented", "split_items", "subset", "type_index",
           "volume_rows"]
