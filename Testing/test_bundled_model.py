"""The bundled default model, end to end on real chest CTs it never saw in training.

lung1/lung2 (PyRadiomics' sample CTs, fetched by `make test`) carry expert tumour masks: the
model's best nodule/mass finding must lie on the tumour. This is what breaks when orientation,
the input representation, the weights or the 3D merge go wrong, whatever the unit tests say.
"""
from __future__ import annotations

import numpy as np
import pytest

from ChestCTMTLLib import modelio, sample_data
from ChestCTMTLLib.inference import analyze
from ChestCTMTLLib.results import CLASS_NAMES
from ChestCTMTLLib.volume_io import read_ct


@pytest.fixture(scope="module")
def bundled():
    try:
        folder = modelio.default_model_dir()
    except modelio.ModelLoadError as exc:  # pragma: no cover - a checkout without a model
        pytest.skip(f"no bundled model: {exc}")
    return modelio.load_model(folder)


def test_bundled_model_is_registered_checksummed_and_small(bundled):
    registry = modelio.read_registry()
    entry = registry["models"][registry["default"]]
    assert bundled.card["id"] == registry["default"]
    assert bundled.identity.sha256 == entry["sha256"] == bundled.card["sha256"]
    assert (modelio.default_model_dir() / "model.safetensors").stat().st_size < 50 * 2**20
    for key in ("metrics", "limits", "training_data"):
        assert bundled.card.get(key), f"model card lacks {key}"


@pytest.mark.parametrize("case", ["lung1", "lung2"])
def test_best_nodule_finding_lies_on_the_expert_tumour(bundled, case):
    try:
        image = read_ct(str(sample_data.sample_path(f"{case}_image.nrrd")))
        label = read_ct(str(sample_data.sample_path(f"{case}_label.nrrd")), validate=False)
    except sample_data.SampleDataError as exc:
        pytest.skip(f"sample CT not fetched: {exc}")
    result = analyze(image, bundled, device="cpu")

    assert set(result.class_probabilities) == set(CLASS_NAMES)
    assert abs(sum(result.class_probabilities.values()) - 1) < 1e-6
    assert result.lesion_masks["nodule-mass"].shape == image.array.shape

    k, j, i = np.nonzero(label.array)
    tumour = image.ijk_to_ras_points(np.stack([i, j, k], axis=1))
    nodules = [f for f in result.findings if f.type == "nodule-mass"]
    assert nodules, "no nodule/mass finding at all"
    best = max(nodules, key=lambda f: f.score)
    # Within the tumour's extent, allowing one slice (5 mm) of slack along each axis.
    lo, hi = tumour.min(axis=0) - 5.0, tumour.max(axis=0) + 5.0
    assert np.all(best.center_ras >= lo) and np.all(best.center_ras <= hi), (
        f"best nodule finding at {np.round(best.center_ras, 1)} is off the tumour "
        f"[{np.round(lo, 1)}, {np.round(hi, 1)}]")
    # The segmentation overlaps the tumour too.
    assert result.lesion_masks["nodule-mass"][label.array > 0].any()
    # Lung involvement is measured on the same lungs the report states, and is small here.
    inv = result.involvement
    for name in ("right lung", "left lung"):
        assert inv["lungs"][name]["volume_ml"] == pytest.approx(result.lungs[name]["volume_ml"], abs=0.1)
    assert 0.0 <= inv["both"]["percent"] < 5.0


def test_card_covid_dice_is_reproduced_by_the_evaluation_command(bundled, data_dir, tmp_path):
    """The card's headline number comes from `evaluate`, not from a hand: rerun it on the
    held-out COVID-SemiSeg doctor slices (the only source that number depends on)."""
    from ChestCTMTLTraining.config import load_config
    from ChestCTMTLTraining.evaluate import evaluate_model

    spec = [s for s in load_config("default")["sources"] if s["name"] == "covid-doctor"]
    m = evaluate_model(modelio.default_model_dir(), "default", tmp_path / "eval", probe_format=False,
                       overrides={"sources": spec, "data_root": str(data_dir)})
    assert m["model_sha256"] == bundled.identity.sha256
    assert m["samples"] == {"covid-doctor": 10}
    assert m["headline"]["covid_dice"] == pytest.approx(bundled.card["metrics"]["validation"]["covid_dice"],
                                                        abs=1e-4)
