"""Fine-tuning starts from a bundled model: every tensor of the source is taken, a head the new
config adds (infection types) starts fresh, anything else that differs is refused."""
from __future__ import annotations

import pytest
import torch

from ChestCTMTLLib.model import ModelConfig, MultiTaskNet
from ChestCTMTLLib.modelio import default_model_dir, load_model
from ChestCTMTLTraining.train import TrainingError, init_weights


def test_bundled_model_starts_a_typed_fine_tune():
    bundled = load_model(default_model_dir())
    typed_cfg = ModelConfig.from_dict(dict(bundled.config.to_dict(),
                                           infection_types=["ground-glass opacity", "consolidation"]))
    torch.manual_seed(0)
    net = MultiTaskNet(typed_cfg)
    fresh_head = net.seg_decoder.type_out.weight.detach().clone()
    new, origin = init_weights(net, typed_cfg, bundled.identity.id, "cpu", bundled.representation)
    assert new == ["seg_decoder.type_out"] and bundled.identity.id in origin
    theirs = bundled.model.state_dict()
    for k, v in net.state_dict().items():
        if k.startswith("seg_decoder.type_out."):
            continue
        assert torch.equal(v, theirs[k]), k
    assert torch.equal(net.seg_decoder.type_out.weight, fresh_head)  # untouched, not zeroed


def test_other_architectures_are_refused(tmp_path):
    bundled = load_model(default_model_dir())
    wider = ModelConfig.from_dict(dict(bundled.config.to_dict(), det_width=bundled.config.det_width * 2))
    with pytest.raises(TrainingError, match="another architecture"):
        init_weights(MultiTaskNet(wider), wider, str(bundled.folder), "cpu")
    with pytest.raises(TrainingError, match="no such checkpoint or model folder"):
        init_weights(MultiTaskNet(bundled.config), bundled.config, str(tmp_path / "none"), "cpu")
