"""Models that run anywhere: a model file as ONNX, and ONNX models run with onnxruntime.

``affbench export-model ... --format onnx`` writes the network of a model file as one ONNX graph
(``torch.onnx.export``) whose metadata holds the model description as JSON, so that a reader with
only onnxruntime (C++, a browser, a phone, a GPU server without PyTorch) knows what goes in and
what comes out:

- input ``images``: float32 (N, 3, S, S) RGB, ``S = encoder_spec["input_size"]``, scaled to [0, 1]
  then normalised per channel with ``encoder_spec["mean"]`` and ``encoder_spec["std"]``; the face
  is aligned with ``alignment`` at ``crop_size`` and centre-cropped to ``eval_crop`` first;
- outputs: one per output key the tasks read (``au``, ``expression``, ``va``), named by that key,
  raw as the PyTorch model gives them (``encoder_spec["au_output"]`` says logits, probabilities
  or intensities);
- metadata ``affbench_model``: the description (:class:`~affbench.inference.bundle.ModelDescription`,
  JSON) and ``affbench_outputs``: the output names, in order (JSON).

The metadata is data: it is parsed as JSON and nothing in an ONNX file runs Python code.
:class:`OnnxModel` (``affbench.load_model("model.onnx")``, ``affbench predict model.onnx VIDEO``)
runs such a file with onnxruntime, on the CUDA execution provider where onnxruntime has one and the
device asks for it, else on the CPU, through the same detection, alignment and framing as a
PyTorch model file. Every encoder family exports (``tests/test_portable.py`` compares the outputs).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affbench.errors import AffbenchError
from affbench.inference.bundle import ModelDescription, build_model
from affbench.inference.predict import LoadedModel

#: The ONNX opset written (onnxruntime 1.16 and newer run it).
OPSET = 17
INPUT_NAME = "images"
DESCRIPTION_KEY = "affbench_model"
OUTPUTS_KEY = "affbench_outputs"
INSTALL_HINT = 'pip install "affbench[onnx]"'


def output_keys(description: ModelDescription) -> list[str]:
    """The output keys an ONNX model of ``description`` has, in order (those its tasks read)."""
    return sorted({task.output_key for task in description.tasks})


def export_onnx(out: str | os.PathLike, description: ModelDescription, state_dict: Mapping[str, Any]) -> Path:
    """Write the network of a model file as ONNX with its description in the metadata.

    Parameters
    ----------
    out : path
        The ``.onnx`` file to write (atomically: a killed export leaves no half file).
    description : ModelDescription
        What the model is; stored as JSON under the metadata key ``affbench_model``.
    state_dict : mapping
        Its weights.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    AffbenchError
        When onnx is not installed, or the exporter cannot express the network.
    """
    onnx = _require("onnx")
    from affbench.runtime.files import atomic_write

    keys = output_keys(description)
    model = build_model(description, state_dict)
    network = _Outputs(model, keys).eval()
    size = int(model.spec.input_size)
    example = torch.zeros(2, 3, size, size)
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *keys)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as temporary:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's notes on tracing, not the user's business
                # The TorchScript exporter: the torch.export-based one needs onnxscript, not a dependency.
                torch.onnx.export(network, (example,), str(temporary), input_names=[INPUT_NAME], output_names=keys,
                                  dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; the user needs one sentence
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AffbenchError(f"Encoder {description.encoder!r} cannot be exported to ONNX: {first}") from None
        graph = onnx.load(str(temporary))
        for key, value in ((DESCRIPTION_KEY, json.dumps(description.to_dict())), (OUTPUTS_KEY, json.dumps(keys))):
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        graph.producer_name = "affbench"
        onnx.save(graph, str(temporary))
    return out


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AffbenchError(f"ONNX models need the {module} package: {INSTALL_HINT}.") from None


class _Outputs(torch.nn.Module):
    """The encoder with its dict of outputs as a tuple in ``keys`` order (ONNX outputs are positional)."""

    def __init__(self, model: torch.nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[key] for key in self.keys)


def read_onnx_description(session: Any, where: str) -> tuple[ModelDescription, list[str]]:
    """The description and output names an onnxruntime session's model carries in its metadata."""
    metadata = session.get_modelmeta().custom_metadata_map
    if DESCRIPTION_KEY not in metadata:
        raise AffbenchError(f"{where} is an ONNX model but not one affbench exported: its metadata has no "
                            f"{DESCRIPTION_KEY!r} description (export it with affbench export-model --format onnx).")
    try:
        data = json.loads(metadata[DESCRIPTION_KEY])
        keys = json.loads(metadata.get(OUTPUTS_KEY, "[]"))
    except json.JSONDecodeError as exc:
        raise AffbenchError(f"{where}: the model description in its ONNX metadata is not valid JSON ({exc.msg}).") from None
    description = ModelDescription.from_dict(data, where=where)
    return description, [str(k) for k in keys] or output_keys(description)


def is_onnx_model_file(path: Path) -> bool:
    """Whether ``path`` is an ONNX model ``export-model`` wrote: its bytes name the
    ``affbench_model`` metadata key (scanned in blocks; nothing is parsed or run)."""
    key = DESCRIPTION_KEY.encode()
    tail = b""
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            if key in tail + block:
                return True
            tail = block[-len(key):]
    return False


def providers_for(device: str) -> list[str]:
    """onnxruntime execution providers for ``device``: CUDA first where onnxruntime has it and the device
    is ``auto`` or ``cuda``, then the CPU."""
    ort = _require("onnxruntime")
    available = ort.get_available_providers()
    wants_cuda = device == "auto" or device.startswith("cuda")
    return (["CUDAExecutionProvider"] if wants_cuda and "CUDAExecutionProvider" in available else []) + [
        "CPUExecutionProvider"]


class OnnxModel(LoadedModel):
    """An ONNX model file exported by affbench, run with onnxruntime (see the module docstring).

    Everything but the network is :class:`~affbench.inference.predict.LoadedModel`'s: the same
    alignment, framing, batching and columns, so ``predict``, ``predict_video`` and
    ``affbench predict`` treat both alike. ``providers`` lists the onnxruntime execution providers used.
    """

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", batch_size: int = 32,
                 name: str | None = None) -> None:
        from affbench.encoders.registry import get_encoder_spec

        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise AffbenchError(f"Model file {path} does not exist.")
        try:
            session = ort.InferenceSession(str(path), providers=providers_for(device))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; one sentence for the user
            raise AffbenchError(f"{path} is not an ONNX model onnxruntime can run ({str(exc).splitlines()[0]}).") from None
        description, self._keys = read_onnx_description(session, str(path))
        self.session = session
        self.providers = list(session.get_providers())
        self.device = torch.device("cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu")
        spec = get_encoder_spec(description.encoder, **description.options)
        self._describe(description, spec, batch_size=batch_size, name=name or path.stem, origin=path)

    def __repr__(self) -> str:
        return super().__repr__().replace("LoadedModel(", "OnnxModel(", 1)

    def _run(self, images: torch.Tensor, keys: Sequence[str]) -> dict[str, np.ndarray]:
        from affbench.data.loader import normalise

        x = normalise(images, self.spec.mean, self.spec.std).numpy()
        values = self.session.run(self._keys, {INPUT_NAME: x})
        found = dict(zip(self._keys, values))
        return {key: np.asarray(found[key], dtype=np.float32) for key in keys}
