"""The inference network on ONNX Runtime, for float32 CPUs.

Why: on a CPU without native bfloat16 (AVX2 only, e.g. AMD EPYC Zen 3) PyTorch's eager
depthwise-separable convolutions leave most of the cores' arithmetic unused; ONNX Runtime runs
the same float32 graph about twice as fast on 2 cores (docs/benchmarks/speed.md). There is one
model definition: the graph is exported from :func:`.network.inference_network`'s folded
network of the loaded weights, for the tasks asked, and cached per weights checksum, tasks and
exporter version (``cache_dir()/onnx``), so only the first analysis on a machine pays the
export (~2 s). A cached graph is used only when its SHA-256 matches the one recorded when it
was written (an edited or half-copied file is exported again).

Optional: ``onnxruntime`` and ``onnx`` (the exporter needs it) are not in a fresh Slicer, so the
module there runs PyTorch; ``runtime="auto"`` picks ONNX Runtime only where both import.
Outputs agree with PyTorch's within float rounding (``Testing/test_onnx_runtime.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from . import errors
from .registry import sha256_file

OPSET = 17


class RuntimeUnavailableError(errors.ChestCTMTLError, RuntimeError):
    """runtime="onnxruntime" asked for where it cannot run."""

    cause = "runtime-unavailable"


def onnx_runtime_available() -> bool:
    """Both the runtime and the exporter's ``onnx`` package are installed (found, not imported:
    ``onnx`` is imported only when a graph is exported)."""
    from importlib.util import find_spec

    try:
        return find_spec("onnxruntime") is not None and find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


def resolve_runtime(runtime: str, device: str, precision: str) -> str:
    """"torch" or "onnxruntime". "auto": ONNX Runtime for a float32 network on the CPU when it
    is installed (PyTorch keeps bfloat16 CPUs and GPUs, where it is the faster one)."""
    if runtime == "torch":
        return "torch"
    cpu_f32 = not str(device).startswith("cuda") and precision == "float32"
    if runtime == "onnxruntime":
        if not cpu_f32:
            raise RuntimeUnavailableError(
                "runtime onnxruntime runs the float32 network on the CPU only (device %s, "
                "precision %s): use --device cpu --precision float32, or --runtime torch"
                % (device, precision))
        if not onnx_runtime_available():
            raise RuntimeUnavailableError(
                "runtime onnxruntime needs the packages onnxruntime and onnx "
                "(pip install onnxruntime onnx), or use --runtime torch")
        return "onnxruntime"
    return "onnxruntime" if cpu_f32 and onnx_runtime_available() else "torch"


class OnnxNetwork:
    """Called like the PyTorch network, ``net(x, tasks) -> {name: tensor}``, on float32 NCHW input.

    The session is made when first called and dropped by :meth:`release` after a volume's
    slices: its memory arena (needed for speed: without it every operator allocates, ~2x slower)
    keeps its peak for the session's life, and the stages after the network need that room.
    Making a session again costs ~0.05 s."""

    def __init__(self, tasks: Tuple[str, ...], names: Tuple[str, ...], path: Path, threads: int) -> None:
        import torch

        self.tasks, self.names, self.path, self.threads = tasks, names, path, int(threads)
        self.input_dtype = torch.float32
        self.fixed_threads = True  # set when the session is made: no thread tuning
        self._torch = torch
        self._session = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = max(1, self.threads)
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            self._session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        return self._session

    def release(self) -> None:
        self._session = None

    def __call__(self, x, tasks=None) -> Dict[str, object]:
        if tasks is not None and tuple(tasks) != self.tasks:
            raise ValueError("this ONNX graph was exported for tasks %s, not %s" % (self.tasks, tuple(tasks)))
        feed = np.ascontiguousarray(x.detach().to("cpu", self._torch.float32).numpy())
        got = self.session.run(list(self.names), {"x": feed})
        return {n: self._torch.from_numpy(a) for n, a in zip(self.names, got)}


def _graph_key(loaded, tasks: Sequence[str]) -> str:
    import torch

    ident = json.dumps({"sha256": loaded.identity.sha256, "tasks": list(tasks), "torch": torch.__version__,
                        "opset": OPSET, "architecture": loaded.config.to_dict()}, sort_keys=True)
    return "%s-%s" % (loaded.identity.id, hashlib.sha256(ident.encode()).hexdigest()[:16])


def _export(net, tasks: Tuple[str, ...], path: Path) -> Tuple[str, ...]:
    """Write the graph atomically; returns its output names."""
    import torch

    x = torch.zeros((2, net.config.in_channels, net.config.input_size, net.config.input_size))
    with torch.inference_mode():
        names = tuple(sorted(net(x, tasks)))

    class _Fixed(torch.nn.Module):  # the tasks fixed, outputs as a tuple in ``names`` order
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inp):
            out = self.inner(inp, tasks)
            return tuple(out[n] for n in names)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Fixed(net).eval(), (x,), tmp, input_names=["x"], output_names=list(names),
                              dynamic_axes={"x": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                              opset_version=OPSET, dynamo=False)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    from .paths import atomic_write_text

    atomic_write_text(path.with_suffix(".json"), json.dumps({"sha256": digest, "outputs": list(names)}))
    return names


def _cached(path: Path) -> Optional[Tuple[str, ...]]:
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        if path.is_file() and sha256_file(path) == record["sha256"]:
            return tuple(record["outputs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def onnx_network(loaded, net, tasks: Sequence[str], threads: int,
                 cache: Optional[Path] = None) -> OnnxNetwork:
    """An ONNX Runtime session of ``net`` (the folded float32 CPU network of ``loaded``) for
    ``tasks``; kept on ``loaded`` like :func:`.network.inference_network`'s network."""
    from .paths import cache_dir

    tasks = tuple(tasks)
    key = (id(loaded.model), tasks, int(threads))
    store = loaded.__dict__.setdefault("_onnx_networks", {})
    if key in store:
        return store[key]
    path = Path(cache or (cache_dir() / "onnx")) / (_graph_key(loaded, tasks) + ".onnx")
    names = _cached(path)
    if names is None:
        names = _export(net, tasks, path)
    store.clear()
    store[key] = OnnxNetwork(tasks, names, path, threads)
    return store[key]
