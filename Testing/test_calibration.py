"""calibration.json (ChestCTMTLLib.calibration) and the evidence verdict (ChestCTMTLLib.verdict).

Round trip through a real model folder: what ``write_calibration`` stores is what the Analyzer
runs on; an edited file or one fitted for other weights is refused before any work.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ChestCTMTLLib import calibration as C
from ChestCTMTLLib import errors, modelio
from ChestCTMTLLib.candidates import Candidate
from ChestCTMTLLib.inference import Analyzer
from ChestCTMTLLib.options import AnalysisOptions
from ChestCTMTLLib.verdict import LesionPattern, decide


@pytest.fixture()
def folder(tmp_path):
    from ChestCTMTLLib.model import ModelConfig

    return modelio.create_untrained_model_folder(tmp_path / "m", ModelConfig(backbone="fast", input_size=64))


def test_round_trip_and_the_analyzer_uses_it(folder):
    card = modelio.read_card(folder)
    data = dict(C.DEFAULTS, fitted=True, model_sha256=card["sha256"], temperature=1.7,
                score_threshold=0.35,
                shape_rules={"by_slice_mm": [[0.0, {"min_z_ratio": 0.4, "max_elongation": 3.0}],
                                             [5.0, {"min_z_ratio": 0.5, "max_elongation": 3.3}]]})
    path = C.write_calibration(folder, data)
    assert modelio.read_card(folder)["calibration_sha256"] == modelio.sha256_file(path)
    cal = C.load_calibration(folder, modelio.read_card(folder))
    assert cal.fitted and cal.temperature == 1.7 and cal.score_threshold == 0.35
    assert cal.shape_rules(2.5).min_z_ratio == pytest.approx(0.45)
    assert cal.shape_rules(10.0).max_elongation == pytest.approx(3.3)  # clamped at the end
    an = Analyzer(folder, AnalysisOptions(device="cpu"))
    assert an.score_threshold == 0.35 and an.calibration.temperature == 1.7
    assert Analyzer(folder, AnalysisOptions(device="cpu", score_threshold=0.6)).score_threshold == 0.6


def test_edited_missing_or_foreign_calibration_is_refused(folder):
    card = modelio.read_card(folder)
    path = C.write_calibration(folder, dict(C.DEFAULTS, fitted=True, model_sha256=card["sha256"]))
    text = path.read_text().replace('"temperature": 1.0', '"temperature": 0.5')
    path.write_text(text)
    with pytest.raises(C.CalibrationError, match="changed"):
        C.load_calibration(folder, modelio.read_card(folder))
    with pytest.raises(errors.ModelError):
        Analyzer(folder, AnalysisOptions(device="cpu"))
    path.unlink()
    with pytest.raises(C.CalibrationError, match="missing"):
        C.load_calibration(folder, modelio.read_card(folder))
    # fitted for other weights
    C.write_calibration(folder, dict(C.DEFAULTS, fitted=True, model_sha256="0" * 64))
    with pytest.raises(C.CalibrationError, match="fitted for weights"):
        C.load_calibration(folder, modelio.read_card(folder))


def test_no_calibration_runs_on_the_defaults(folder):
    cal = C.load_calibration(folder, modelio.read_card(folder))
    assert not cal.fitted and cal.score_threshold == C.DEFAULTS["score_threshold"]
    assert Analyzer(folder, AnalysisOptions(device="cpu")).calibration.summary()["fitted"] is False


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2.0, (4000, 3))
    true_t = 2.5
    p_true = np.exp(logits / true_t) / np.exp(logits / true_t).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in p_true])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # over-confident by 2.5x
    t, stats = C.fit_temperature(probs, labels)
    assert t == pytest.approx(true_t, rel=0.15)
    assert stats["nll_after"] < stats["nll_before"]


def _nodule(score, diameter, z_ratio=0.8, elongation=1.3):
    c = Candidate("nodule-mass", (slice(0, 1),) * 3, np.ones((1, 1, 1), bool), score=score, lung=1,
                  zone="upper")
    c.features = {"diameter_mm": diameter, "z_ratio": z_ratio, "elongation": elongation}
    return c


def test_verdict_follows_the_evidence():
    cal = C.Calibration(dict(C.DEFAULTS, score_threshold=0.3))
    names = ("non-covid", "covid", "cancer")
    normalish = np.tile([[0.8, 0.05, 0.15]], (40, 1))
    sel = np.ones(40, bool)
    none = LesionPattern({"right lung": 0.5, "left lung": 0.2}, {}, False)
    from ChestCTMTLLib.verdict import cancer_evidence

    assert decide(normalish, sel, names, None, none, cal)["predicted_class"] == "non-covid"
    nod = cancer_evidence([_nodule(0.6, 20.0)], 1.25, cal)
    out = decide(normalish, sel, names, nod, none, cal, "L1")
    assert out["predicted_class"] == "cancer"
    assert out["evidence"][0]["finding"] == "L1"
    # too small, too low, or not nodule-shaped: no evidence
    assert cancer_evidence([_nodule(0.6, 5.0)], 1.25, cal) is None
    assert cancer_evidence([_nodule(0.2, 20.0)], 1.25, cal) is None
    assert cancer_evidence([_nodule(0.6, 20.0, elongation=2.9)], 1.25, cal) is None
    multifocal = LesionPattern({"right lung": 60.0, "left lung": 25.0},
                               {"right lower": 27, "right middle": 33, "left middle": 10, "left upper": 15},
                               True, largest_zone_share=0.39, typical_covid=True)
    lobar = LesionPattern({"right lung": 80.0, "left lung": 230.0},
                          {"left lower": 205, "right lower": 56}, True, largest_zone_share=0.67)
    assert decide(normalish, sel, names, None, multifocal, cal)["predicted_class"] == "covid"
    assert decide(normalish, sel, names, None, lobar, cal)["predicted_class"] == "non-covid"
    probs = decide(normalish, sel, names, None, multifocal, cal)["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0)


def test_score_threshold_fit_known_answer():
    from ChestCTMTLTraining.calibrate import fit_score_threshold

    scans = [{"name": "a", "fp_scores": [0.55, 0.29], "big_lesion_scores": [0.82]},
             {"name": "b", "fp_scores": [0.1], "big_lesion_scores": [0.92]}]
    assert fit_score_threshold(scans, 0)["score_threshold"] == pytest.approx(0.6)
    assert fit_score_threshold(scans, 1)["score_threshold"] == pytest.approx(0.3)
    # nothing meets the budget with the big nodule found: the highest grid value, said so
    bad = [{"name": "c", "fp_scores": [0.95], "big_lesion_scores": [0.5]}]
    assert fit_score_threshold(bad, 0)["score_threshold"] == pytest.approx(0.9)


def test_calibrate_command_writes_a_calibration_the_analyzer_runs_on(data_dir, tmp_path):
    """The real command on a copy of the bundled model, with a one-scan manifest (lung1) and a
    few slices per source: calibration.json lands in the folder, checksummed in its card."""
    import shutil

    from ChestCTMTLLib import sample_data
    from ChestCTMTLTraining.calibrate import calibrate

    try:
        sample_data.sample_path("lung1_image.nrrd")
    except sample_data.SampleDataError as exc:
        pytest.skip(f"sample CT not fetched: {exc}")
    if not (data_dir / "lidc_nodule_vois").is_dir():
        pytest.skip("lidc_nodule_vois not in the data root")
    model = tmp_path / "model"
    shutil.copytree(modelio.default_model_dir(), model)
    (model / C.CALIBRATION_FILE).unlink()
    card = modelio.read_card(model)
    card.pop("calibration_sha256")
    (model / "model.json").write_text(json.dumps(card, indent=2))
    manifest = tmp_path / "one.yaml"
    manifest.write_text("scans:\n  - {name: lung1, image: 'sample:lung1_image.nrrd', class: cancer, "
                        "role: calibration, lesion_mask: 'sample:lung1_label.nrrd'}\n")
    summary = calibrate(model, manifest=str(manifest), max_per_source=8, output=str(tmp_path / "out"),
                        progress=False)
    cal = C.load_calibration(model, modelio.read_card(model))
    assert cal.fitted and cal.score_threshold == summary["score_threshold"]
    assert summary["calibration_scans"] == ["lung1"]
    assert 0.05 <= cal.temperature <= 20
    assert cal.shape_rules(5.0).min_z_ratio > cal.shape_rules(1.25).min_z_ratio
    assert (tmp_path / "out" / "calibration_reliability.png").stat().st_size > 1000
    assert Analyzer(model, AnalysisOptions(device="cpu")).score_threshold == cal.score_threshold


def test_explanation_names_the_finding_and_its_ratio():
    from ChestCTMTLLib.verdict import cancer_evidence, explain

    cal = C.Calibration(dict(C.DEFAULTS, score_threshold=0.3))
    none = LesionPattern({"right lung": 0.5, "left lung": 0.2}, {}, False)
    nod = cancer_evidence([_nodule(0.6, 20.0)], 1.25, cal)
    out = decide(np.tile([[0.8, 0.05, 0.15]], (10, 1)), np.ones(10, bool), ("non-covid", "covid", "cancer"),
                 nod, none, cal, "L3")
    text = explain(out)
    assert "L3" in text and "cancer x19" in text and "no diffuse bilateral process" in text


@pytest.mark.parametrize("recipe,expected", [("default", {"mode": "all"}),
                                             ("v3_sources", None)])
def test_temperature_slices_are_never_training_slices(recipe, expected, monkeypatch):
    """SARS-CoV-2 CT is unseen by the default recipe (all its slices fit the temperature) but
    trained on by v3 (only its validation split may)."""
    from ChestCTMTLTraining import calibrate, loading
    from ChestCTMTLTraining.config import load_config

    seen = {}

    def capture(cfg, split, representation, lesion_types, specs):
        seen.update(split=split, specs={s["name"]: s for s in specs})
        raise StopIteration

    monkeypatch.setattr(loading, "load_split", capture)
    with pytest.raises(StopIteration):
        calibrate.slice_probabilities(type("Loaded", (), {"representation": None, "config": type(
            "Config", (), {"lesion_types": ()})})(), data=recipe)
    sars = seen["specs"]["sarscov2-ct"]
    assert seen["split"] == "val"
    if expected is None:
        recipe_spec = next(s for s in load_config(recipe)["sources"] if s["name"] == "sarscov2-ct")
        assert sars["holdout"] == recipe_spec["holdout"] and sars["holdout"]["mode"] != "all"
    else:
        assert sars["holdout"] == expected
