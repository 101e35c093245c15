"""report.json structure from a hand-made result (known answers)."""
from __future__ import annotations

import json

import numpy as np

from ChestCTMTLLib.results import AnalysisResult, Finding, ModelIdentity, FINDINGS_TSV_COLUMNS
from ChestCTMTLLib.volume import CTVolume


def _result(probabilities, predicted):
    ijk_to_ras = np.diag([-0.7, -0.7, 2.5, 1.0])
    ijk_to_ras[:3, 3] = (100.0, 120.0, -300.0)
    volume = CTVolume(np.full((4, 8, 8), -1000, np.int16), ijk_to_ras, name="v")
    finding = Finding("F1", "nodule-mass", 0.87654, [1.0, 2.0, 3.0], [10.0, 11.0, 12.5],
                      [1, 2, 0], [3, 4, 1], 523.25)
    return AnalysisResult(volume, probabilities, predicted, None, None, {}, None, [finding],
                          ModelIdentity("m", "1.0", "ab" * 32), {"inference": 1.23456})


def test_report_dict_has_the_documented_schema():
    report = _result({"non-covid": 0.2, "covid": 0.3, "cancer": 0.5}, "cancer").report_dict("x.nrrd")
    json.dumps(report)  # serialisable as-is
    assert abs(sum(report["classification"].values()) - 1) < 1e-9
    assert report["predicted_class"] == "cancer"
    assert list(report["findings"][0]) == list(FINDINGS_TSV_COLUMNS)
    assert report["findings"][0]["score"] == 0.8765
    assert report["input"]["path"] == "x.nrrd"
    assert report["input"]["size"] == [8, 8, 4]
    # LPS origin: the RAS origin with R and A negated.
    assert report["input"]["origin"] == [-100.0, -120.0, -300.0]
    assert report["input"]["spacing"] == [0.7, 0.7, 2.5]
    assert report["model"] == {"id": "m", "version": "1.0", "sha256": "ab" * 32}


def test_report_without_classification_says_so():
    report = _result({}, "").report_dict()
    assert report["classification"] is None and report["predicted_class"] is None
