"""bfloat16 on CPUs that compute it natively: the same answers as float32, within stated
tolerances, on a real whole CT (speed is measured by benchmarks/benchmark_analyze.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ChestCTMTLLib import inference
from ChestCTMTLLib.options import AnalysisOptions, OptionError

#: What "the same analysis" means between float32 and bfloat16 (measured on the 4 COVID-CT-MD
#: and LIDC whole CTs: Dice >= 0.955, probabilities within 0.001, nodule scores within 0.003,
#: involvement within 0.21 points; see docs/benchmarks/speed.md).
MIN_DICE = 0.95
MAX_PROBABILITY_DIFF = 0.01
MAX_SCORE_DIFF = 0.03
MAX_NODULE_CENTRE_MM = 2.0
MAX_INVOLVEMENT_POINTS = 0.5


def test_precision_option_is_validated_and_resolved(monkeypatch):
    assert AnalysisOptions().precision == "auto"
    assert AnalysisOptions(precision="BFloat16").precision == "bfloat16"
    with pytest.raises(OptionError, match="precision must be one of auto, float32, bfloat16"):
        AnalysisOptions(precision="float16")
    monkeypatch.setattr(inference, "native_cpu_bfloat16", lambda: False)
    assert inference.resolve_precision("auto", "cpu") == "float32"
    assert inference.resolve_precision("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(inference, "native_cpu_bfloat16", lambda: True)
    assert inference.resolve_precision("auto", "cpu") == "bfloat16"
    assert inference.resolve_precision("float32", "cpu") == "float32"


def _dice(a, b) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


def test_bfloat16_gives_the_float32_analysis_on_a_real_ct(data_dir):
    if not inference.native_cpu_bfloat16():
        pytest.skip("this CPU has no native bfloat16 (AMX / AVX512-BF16): 'auto' runs float32 "
                    "here, so there is nothing to compare")
    from ChestCTMTLLib.volume_io import read_ct

    path = data_dir / "covid_ct_md" / "covid_P001.nii.gz"
    if not path.exists():
        pytest.skip("real data not available: %s" % path)
    ct = read_ct(path)
    a = inference.Analyzer(None, device="cpu", precision="float32").apply(ct)
    b = inference.Analyzer(None, device="cpu", precision="bfloat16").apply(ct)
    assert (a.precision, b.precision) == ("float32", "bfloat16")
    assert a.predicted_class == b.predicted_class == "covid"
    for name in a.class_probabilities:
        assert abs(a.class_probabilities[name] - b.class_probabilities[name]) <= MAX_PROBABILITY_DIFF
    for name in a.lesion_masks:
        assert _dice(a.lesion_masks[name], b.lesion_masks[name]) >= MIN_DICE, name
    assert _dice(a.lung_labels, b.lung_labels) >= 0.999
    assert len(a.findings) == len(b.findings)
    for fa, fb in zip(a.findings, b.findings):
        assert (fa.type, fa.lung, fa.zone) == (fb.type, fb.lung, fb.zone)
        assert abs(fa.score - fb.score) <= MAX_SCORE_DIFF
        if fa.type == "nodule-mass":
            assert np.linalg.norm(np.subtract(fa.center_ras, fb.center_ras)) <= MAX_NODULE_CENTRE_MM
    pa, pb = a.involvement["both"]["percent"], b.involvement["both"]["percent"]
    assert abs(pa - pb) <= MAX_INVOLVEMENT_POINTS
    diff = np.abs(a.reconstruction_hu.astype(np.int32) - b.reconstruction_hu.astype(np.int32))
    assert float(diff.mean()) <= 5.0  # HU; the reconstruction is a picture, not a measurement
