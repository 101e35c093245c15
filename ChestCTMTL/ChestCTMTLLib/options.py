"""Every analysis option in one home: defaults, allowed ranges and validation.

The CLI, the Slicer module's parameter node, the batch script and the evaluation commands all
build one :class:`AnalysisOptions` and hand it to :class:`~.inference.Analyzer`; none of them
keeps a default or a range of its own (like nnU-Net's predictor or lungmask's ``LMInferer``,
options are resolved once, at the entry point).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Optional, Tuple, Union

from . import errors

#: (low, high) inclusive for every numeric option; the UI's sliders read these too.
RANGES: Dict[str, Tuple[float, float]] = {
    "score_threshold": (0.0, 1.0),
    "seg_threshold": (0.05, 0.95),
    "min_island_mm3": (0.0, 10000.0),
    "min_finding_extent_mm": (0.0, 50.0),
    "lung_margin_mm": (0.0, 30.0),
}

DEFAULT_SEG_THRESHOLD = 0.5
DEFAULT_MIN_ISLAND_MM3 = 14.0  # a 3 mm sphere: LIDC's own lower limit for outlined nodules
DEFAULT_MIN_FINDING_EXTENT_MM = 3.0  # along the slice axis; drops one-slice flickers
DEFAULT_LUNG_MARGIN_MM = 3.0  # lesion voxels this close to a lung still count as "in the lung"
#: Used only when a model folder has no calibration.json (see :mod:`.calibration`).
FALLBACK_SCORE_THRESHOLD = 0.5

DEVICES = ("auto", "cpu", "cuda")
#: "auto": bfloat16 on a CPU with native bfloat16 (AMX or AVX512-BF16) and under CUDA autocast
#: on a GPU, float32 elsewhere (see inference.resolve_precision).
PRECISIONS = ("auto", "float32", "bfloat16")
#: what runs the network: "auto" is ONNX Runtime for a float32 network on the CPU where it is
#: installed, else PyTorch (see onnx_network.resolve_runtime)
RUNTIMES = ("auto", "torch", "onnxruntime")


class OptionError(errors.ChestCTMTLError, ValueError):
    """An analysis option outside its range or of the wrong kind."""

    cause = "bad-option"


@dataclass(frozen=True)
class AnalysisOptions:
    """How one analysis runs. Frozen and self-validating: an invalid value never gets in.

    ``score_threshold`` None means the model's own operating point (its calibration.json);
    a number overrides it for the findings list only - the verdict always uses the calibrated
    operating point, so moving a display threshold never changes the diagnosis.
    """

    device: str = "auto"
    tasks: Optional[Tuple[str, ...]] = None
    score_threshold: Optional[float] = None
    seg_threshold: float = DEFAULT_SEG_THRESHOLD
    min_island_mm3: float = DEFAULT_MIN_ISLAND_MM3
    min_finding_extent_mm: float = DEFAULT_MIN_FINDING_EXTENT_MM
    lung_margin_mm: float = DEFAULT_LUNG_MARGIN_MM
    lungs: bool = True  # False: the lung-blind pipeline (analysis of the whole lung box)
    batch_size: Optional[int] = None
    channels_last: bool = True
    num_threads: Union[None, int, str] = "auto"
    precision: str = "auto"
    runtime: str = "auto"

    def __post_init__(self) -> None:
        dev = str(self.device or "auto").lower()
        if not (dev in DEVICES or dev.startswith("cuda:")):
            raise OptionError("device must be one of %s (or cuda:N), got %r"
                              % (", ".join(DEVICES), self.device))
        object.__setattr__(self, "device", dev)
        precision = str(self.precision or "auto").lower()
        if precision not in PRECISIONS:
            raise OptionError("precision must be one of %s, got %r"
                              % (", ".join(PRECISIONS), self.precision))
        object.__setattr__(self, "precision", precision)
        runtime = str(self.runtime or "auto").lower()
        if runtime not in RUNTIMES:
            raise OptionError("runtime must be one of %s, got %r" % (", ".join(RUNTIMES), self.runtime))
        object.__setattr__(self, "runtime", runtime)
        if self.tasks is not None:
            if isinstance(self.tasks, str):
                raise OptionError("tasks must be a list of task names, got the string %r" % self.tasks)
            object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if value is None and name == "score_threshold":
                continue
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise OptionError("%s must be a number, got %r" % (name, value)) from None
            if not lo <= v <= hi or v != v:
                raise OptionError("%s must lie in [%g, %g], got %g" % (name, lo, hi, v))
            object.__setattr__(self, name, v)
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise OptionError("batch_size must be >= 1, got %r" % self.batch_size)
        if self.num_threads not in (None, "auto"):
            try:
                n = int(self.num_threads)
            except (TypeError, ValueError):
                raise OptionError("num_threads must be an int, None or 'auto', got %r"
                                  % self.num_threads) from None
            if n < 1:
                raise OptionError("num_threads must be >= 1, got %d" % n)
            object.__setattr__(self, "num_threads", n)

    def replace(self, **changes) -> "AnalysisOptions":
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks) if self.tasks is not None else None
        return d

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
