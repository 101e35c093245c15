"""A config's samples for one split: from its data pack when it names one, else from the sources."""
from __future__ import annotations

from typing import List, Optional, Sequence

from ChestCTMTLLib.representation import Representation
from ChestCTMTLLib.results import LESION_TYPES

from .config import resolve_root
from .pack import read_pack
from .sources import SampleSet, limit_samples, load_sources, with_type_channels


def load_split(cfg: dict, split: str, rep: Representation, lesion_types: Sequence[str] = LESION_TYPES,
               specs: Optional[Sequence[dict]] = None) -> List[SampleSet]:
    """``specs`` (default: all of the config's sources) for ``split``; a pack serves only its own sources.

    Every returned set has the same mask channels: the lesion types, then the infection types
    when any source labels them (empty and not present in the sets that do not)."""
    specs = list(cfg["sources"]) if specs is None else list(specs)
    if cfg.get("data_pack"):
        by_name = {s.get("name"): s for s in specs}
        sets = read_pack(cfg["data_pack"], split, rep, cfg["sources"], lesion_types)
        return with_type_channels([limit_samples(s, by_name[s.name].get("max_samples")) for s in sets
                                   if s.name in by_name and len(s)])
    return with_type_channels(load_sources(specs, split, rep, resolve_root(cfg), lesion_types))
