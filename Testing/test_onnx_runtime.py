"""ONNX Runtime runs the same float32 network as PyTorch: how the runtime is chosen, the graph
cache (checksummed, exported once), and the same analysis on a real whole CT within stated
tolerances (speed is measured by benchmarks/benchmark_analyze.py, not here)."""
from __future__ import annotations

import numpy as np
import pytest

from ChestCTMTLLib import inference, onnx_network
from ChestCTMTLLib.onnx_network import RuntimeUnavailableError, resolve_runtime
from ChestCTMTLLib.options import AnalysisOptions, OptionError

needs_ort = pytest.mark.skipif(not onnx_network.onnx_runtime_available(),
                               reason="onnxruntime and onnx are not installed (requirements.txt has them)")

#: "The same analysis" between the runtimes (both float32; measured on COVID-CT-MD P001 and
#: LIDC-IDRI-0002: probabilities within 1e-6, identical findings, masks differing in a handful
#: of voxels where a probability sits on the threshold's 8-bit step).
MIN_MASK_AGREEMENT = 0.9999  # fraction of identical voxels in each lesion mask
MAX_PROBABILITY_DIFF = 1e-4
MAX_SCORE_DIFF = 0.005
MAX_CENTRE_MM = 0.5


def test_runtime_option_is_validated_and_resolved(monkeypatch):
    assert AnalysisOptions().runtime == "auto"
    assert AnalysisOptions(runtime="ONNXRuntime").runtime == "onnxruntime"
    with pytest.raises(OptionError, match="runtime must be one of auto, torch, onnxruntime"):
        AnalysisOptions(runtime="tensorrt")
    monkeypatch.setattr(onnx_network, "onnx_runtime_available", lambda: True)
    assert resolve_runtime("auto", "cpu", "float32") == "onnxruntime"
    assert resolve_runtime("auto", "cpu", "bfloat16") == "torch"  # native bf16: PyTorch is faster
    assert resolve_runtime("auto", "cuda", "bfloat16") == "torch"
    assert resolve_runtime("torch", "cpu", "float32") == "torch"
    with pytest.raises(RuntimeUnavailableError, match="float32 network on the CPU only"):
        resolve_runtime("onnxruntime", "cuda", "bfloat16")
    monkeypatch.setattr(onnx_network, "onnx_runtime_available", lambda: False)
    assert resolve_runtime("auto", "cpu", "float32") == "torch"
    with pytest.raises(RuntimeUnavailableError, match="pip install onnxruntime onnx"):
        resolve_runtime("onnxruntime", "cpu", "float32")


def test_cli_takes_the_runtime():
    from ChestCTMTLMRML.cli import build_parser, options_from_args

    args = build_parser().parse_args(["analyze", "x.nrrd", "--output", "o", "--runtime", "torch"])
    assert options_from_args(args).runtime == "torch"


@needs_ort
def test_graph_is_exported_once_and_checked_before_use(tmp_path, monkeypatch):
    import torch

    from ChestCTMTLLib.modelio import load_model
    from ChestCTMTLLib.network import inference_network

    from ChestCTMTLLib.modelio import default_model_dir

    loaded = load_model(default_model_dir())
    net = inference_network(loaded, "cpu", True, "float32")
    tasks = tuple(loaded.config.tasks)
    first = onnx_network.onnx_network(loaded, net, tasks, 1, cache=tmp_path)
    assert first.path.is_file() and first.path.with_suffix(".json").is_file()
    x = torch.rand(2, 1, 256, 256)
    with torch.inference_mode():
        want = net(x, tasks)
    got = first(x, tasks)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].float().numpy(), atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="exported for tasks"):
        first(x, ("classification",))
    first.release()
    assert first(x)["class_logits"].shape == (2, 3)  # a released session comes back when called

    exports = []
    real_export = onnx_network._export
    monkeypatch.setattr(onnx_network, "_export", lambda *a: exports.append(a) or real_export(*a))
    again = load_model(loaded.folder)  # a new LoadedModel: nothing cached on it
    onnx_network.onnx_network(again, inference_network(again, "cpu", True, "float32"), tasks, 1, cache=tmp_path)
    assert exports == []  # the cached graph, its checksum matching
    with open(first.path, "r+b") as f:  # a damaged graph is exported again, never run
        f.seek(200)
        f.write(b"\0" * 16)
    third = load_model(loaded.folder)
    fresh = onnx_network.onnx_network(third, inference_network(third, "cpu", True, "float32"), tasks, 1,
                                      cache=tmp_path)
    assert len(exports) == 1 and fresh(x)["class_logits"].shape == (2, 3)


@needs_ort
def test_onnx_runtime_gives_the_pytorch_analysis_on_a_real_ct(data_dir):
    from ChestCTMTLLib.volume_io import read_ct

    path = data_dir / "covid_ct_md" / "covid_P001.nii.gz"
    if not path.exists():
        pytest.skip("real data not available: %s" % path)
    ct = read_ct(path)
    a = inference.Analyzer(None, device="cpu", precision="float32", runtime="torch").apply(ct)
    b = inference.Analyzer(None, device="cpu", precision="float32", runtime="onnxruntime").apply(ct)
    assert (a.runtime, b.runtime) == ("torch", "onnxruntime")
    assert a.predicted_class == b.predicted_class == "covid"
    for name in a.class_probabilities:
        assert abs(a.class_probabilities[name] - b.class_probabilities[name]) <= MAX_PROBABILITY_DIFF
    for name in a.lesion_masks:
        same = float(np.mean(a.lesion_masks[name] == b.lesion_masks[name]))
        assert same >= MIN_MASK_AGREEMENT, (name, same)
    assert float(np.mean(a.lung_labels == b.lung_labels)) >= MIN_MASK_AGREEMENT
    assert len(a.findings) == len(b.findings)
    for fa, fb in zip(a.findings, b.findings):
        assert (fa.type, fa.lung, fa.zone) == (fb.type, fb.lung, fb.zone)
        assert abs(fa.score - fb.score) <= MAX_SCORE_DIFF
        assert np.linalg.norm(np.subtract(fa.center_ras, fb.center_ras)) <= MAX_CENTRE_MM
    diff = np.abs(a.reconstruction_hu.astype(np.int32) - b.reconstruction_hu.astype(np.int32))
    assert int(diff.max()) <= 2  # HU
