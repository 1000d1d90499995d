"""ONNX models: export-model --format onnx, and predict / load_model running them with onnxruntime.

Every encoder family is exported and its ONNX outputs compared with the PyTorch model's on the same
framed crops (fp32, CPU); predict on the sample video gives the same table with either file.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from affbench.cli import app
from affbench.encoders.registry import create_encoder
from affbench.errors import AffbenchError
from affbench.faces.alignment import AlignmentTemplate
from affbench.inference.bundle import ModelDescription, TaskOutput, read_model_file, save_model_file, spec_summary
from affbench.inference.portable import OnnxModel, export_onnx
from affbench.inference.predict import LoadedModel, load_model

#: One variant of every family, at a small input size (VGG-16's 7x7 pooling needs its 224).
FAMILIES = {
    "caer": ("emotiram-f", {}),
    "fan": ("fan-au", {"input_size": 64}),
    "megraph": ("megraph-au", {"input_size": 64}),
    "inception": ("smm-emotionnet", {"input_size": 75}),
    "vgg": ("vggface", {}),
}


def describe(model: torch.nn.Module, crop_size: int) -> ModelDescription:
    """A description naming each head of ``model`` (labels are placeholders; only the outputs matter)."""
    spec = model.spec
    kinds = {"au": "au-detection" if spec.au_output != "intensities" else "au-intensity",
             "expression": "expression", "va": "va"}
    tasks = tuple(TaskOutput(kinds[key], kinds[key], key, tuple(f"{key}{i}" for i in range(spec.heads[key])))
                  for key in ("au", "expression", "va") if key in spec.heads)
    return ModelDescription(name=spec.name, encoder=spec.name, options=dict(spec.options), tasks=tasks,
                            crop_size=crop_size, alignment=AlignmentTemplate().describe(crop_size), eval_crop=0.875,
                            encoder_spec=spec_summary(spec))


def crops(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_outputs_equal_the_pytorch_model_of_every_family(family, tmp_path):
    name, options = FAMILIES[family]
    torch.manual_seed(0)
    model = create_encoder(name, **options).eval()
    description = describe(model, crop_size=model.spec.input_size + 8)
    path = export_onnx(tmp_path / f"{name}.onnx", description, model.state_dict())
    reference = LoadedModel(description, model.state_dict(), device="cpu", batch_size=3)
    exported = load_model(path, device="cpu", batch_size=3)
    assert isinstance(exported, OnnxModel) and exported.providers == ["CPUExecutionProvider"]
    batch = crops(3, description.crop_size)  # batch 3: the graph was traced with 2, the batch axis is dynamic
    expected, got = reference.outputs(batch), exported.outputs(batch)
    assert set(got) == set(expected) == {t.output_key for t in description.tasks}
    for key, values in expected.items():
        scale = max(1.0, float(np.abs(values).max()))
        np.testing.assert_allclose(got[key], values, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name} {key}")


def test_export_model_format_onnx_carries_the_description_and_loads(tmp_path):
    torch.manual_seed(1)
    weights = tmp_path / "weights.pth"
    torch.save(create_encoder("emotiram-f").state_dict(), weights)
    labels = "anger,disgust,fear,happy,neutral,sad,surprise"
    paths = {}
    for form in ("pt", "onnx"):
        paths[form] = tmp_path / f"caer.{form}"
        result = CliRunner().invoke(app, ["export-model", "--encoder", "emotiram-f", "--pretrained", str(weights),
                                          "--labels", labels, "--crop-size", "96", "--out", str(paths[form]),
                                          "--format", form])
        assert result.exit_code == 0, result.output
    pt, path = paths["pt"], paths["onnx"]
    description, _ = read_model_file(pt)
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["affbench_model"]) == description.to_dict()
    assert json.loads(metadata["affbench_outputs"]) == ["expression"]
    loaded = load_model(path, device="cpu")
    assert loaded.description == description and loaded.columns == load_model(pt, device="cpu").columns
    table = loaded.predict(np.full((2, 96, 96, 3), 128, np.uint8))
    np.testing.assert_allclose(table[list(description.tasks[0].label_names)].sum(axis=1), 1.0, atol=1e-5)


def test_an_onnx_file_affbench_did_not_write_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "plain.onnx"
    identity = onnx.helper.make_node("Identity", ["images"], ["au"])
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([identity], "plain", [tensor("images", onnx.TensorProto.FLOAT, [1, 3])],
                                   [tensor("au", onnx.TensorProto.FLOAT, [1, 3])])
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(AffbenchError, match="not one affbench exported: its metadata has no 'affbench_model'"):
        load_model(path, device="cpu")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(AffbenchError, match="is not an ONNX model onnxruntime can run"):
        load_model(garbage, device="cpu")


@pytest.mark.slow
def test_predict_with_the_onnx_model_equals_predict_with_its_pytorch_file(tmp_path, sample_data):
    torch.manual_seed(2)
    model = create_encoder("emotiram-f").eval()
    description = describe(model, 112)
    pt = save_model_file(tmp_path / "torch.pt", description, model.state_dict())
    path = export_onnx(tmp_path / "onnx.onnx", *read_model_file(pt))
    video = sample_data["disfa"] / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    out = tmp_path / "both.csv"
    # Both models in one run: the same detection, tracking and alignment feed both, side by side.
    result = CliRunner().invoke(app, ["predict", str(pt), str(video), "-m", str(path), "--out", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "OnnxModel('onnx'" in result.output
    table = pd.read_csv(out)
    labels = list(description.tasks[0].label_names)
    assert len(table) > 10 and table["face_found"].any()
    assert table["torch_expression"].equals(table["onnx_expression"])
    np.testing.assert_allclose(table[[f"onnx_{c}" for c in labels]].to_numpy(),
                               table[[f"torch_{c}" for c in labels]].to_numpy(), rtol=1e-4, atol=1e-6)


def test_export_model_says_in_one_sentence_what_it_cannot_export(tmp_path):
    result = CliRunner().invoke(app, ["export-model", "--encoder", "emotiram-f", "--pretrained", str(tmp_path / "w.pt"),
                                      "--labels", "a", "--out", str(tmp_path / "x.onnx"), "--format", "onnx"])
    assert result.exit_code != 0 and "Traceback" not in result.output and "w.pt" in result.output
    assert not (tmp_path / "x.onnx").exists()
