"""Published checkpoint layouts load with default options, fill every tensor, and compute the reference.

Each reference model is written out here as data: its state-dict key names and shapes, transcribed
from the reference code (CVI-SZU/ME-GraphAU model/ANFL.py and MEFL.py; wtomin/ABAW3_MultiEmotionNet
models/static_linear_model.py and baseline_model.py; ndkhanh360/CAER model/model.py and
orig_model.py), plus the torchvision trunks they embed (the reference trunks keep torchvision's
names). The tests fill them with random values, save them the way each reference training script
saves, load them with ``create_encoder(name, pretrained=PATH)`` and, where the reference forward is
short, compare the outputs with a computation written here from the reference's formulas.
"""

from __future__ import annotations

import builtins
import collections
import math
import pathlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import torchvision

from affbench.encoders import trunks
from affbench.encoders.registry import create_encoder, get_encoder_spec
from affbench.errors import AffbenchError

BN_EPS = 1e-5


def _bn(prefix: str, size: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (size,), f"{prefix}.bias": (size,), f"{prefix}.running_mean": (size,),
            f"{prefix}.running_var": (size,), f"{prefix}.num_batches_tracked": ()}


def _linear(prefix: str, out: int, inp: int, bias: bool = True) -> dict[str, tuple]:
    return {f"{prefix}.weight": (out, inp), **({f"{prefix}.bias": (out,)} if bias else {})}


def _conv(prefix: str, out: int, inp: int, k: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (out, inp, k, k), f"{prefix}.bias": (out,)}


def _fill(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values that keep a deep network finite: fan-in scaled weights, positive variances."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.75
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def _torchvision_shapes(model: torch.nn.Module, keep=lambda key: True, rename=lambda key: key) -> dict[str, tuple]:
    return {rename(k): tuple(v.shape) for k, v in model.state_dict().items() if keep(k)}


def _images(side: int, batch: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _bn_eval(x, state, prefix, dim=-1):
    shape = [1] * x.ndim
    shape[dim] = -1
    mean, var = state[f"{prefix}.running_mean"].view(shape), state[f"{prefix}.running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + BN_EPS) * state[f"{prefix}.weight"].view(shape) + state[f"{prefix}.bias"].view(shape)


# ----------------------------------------------------------------------------------------- ME-GraphAU

NODE = 512  # ResNet-50's 2048 channels // 4


def _resnet50_backbone() -> dict[str, tuple]:
    with torch.device("meta"):
        resnet = torchvision.models.resnet50()
    # The reference sets backbone.fc = None after loading ImageNet: no fc tensors in its checkpoints.
    return _torchvision_shapes(resnet, keep=lambda k: not k.startswith("fc."), rename=lambda k: "backbone." + k)


def megraph_shapes(n_aus: int, stage: int) -> dict[str, tuple]:
    """MEFARG (model/ANFL.py for stage 1, model/MEFL.py for stage 2) with a ResNet-50 backbone."""
    shapes = {**_resnet50_backbone(), **_linear("global_linear.fc", NODE, 2048), **_bn("global_linear.bn", NODE)}
    for i in range(n_aus):
        shapes.update(_linear(f"head.class_linears.{i}.fc", NODE, NODE))
        shapes.update(_bn(f"head.class_linears.{i}.bn", NODE))
    if stage == 1:
        shapes.update(_linear("head.gnn.U", NODE, NODE))
        shapes.update(_linear("head.gnn.V", NODE, NODE))
        shapes.update(_bn("head.gnn.bnv", n_aus))
    else:
        for attention in ("FAM", "ARM"):
            shapes.update(_linear(f"head.edge_extractor.{attention}.linear_q", NODE // 2, NODE))
            shapes.update(_linear(f"head.edge_extractor.{attention}.linear_k", NODE // 2, NODE))
            shapes.update(_linear(f"head.edge_extractor.{attention}.linear_v", NODE, NODE))
        shapes.update(_linear("head.edge_extractor.edge_proj", NODE, NODE))
        shapes.update(_bn("head.edge_extractor.bn", n_aus * n_aus))
        for layer in (1, 2):
            for name in "UVABE":
                shapes.update(_linear(f"head.gnn.{name}{layer}", NODE, NODE, bias=False))
            shapes.update(_bn(f"head.gnn.bnv{layer}", n_aus))
            shapes.update(_bn(f"head.gnn.bne{layer}", n_aus * n_aus))
        shapes.update(_linear("head.edge_fc", 4, NODE))
    shapes["head.sc"] = (n_aus, NODE)
    return shapes


def save_megraph(path, state) -> None:
    """As train_stage1.py / train_stage2.py save: a DataParallel state dict with epoch and optimizer."""
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 5e-4, "params": list(range(3))}]}
    torch.save({"epoch": 19, "state_dict": {"module." + k: v for k, v in state.items()}, "optimizer": optimizer}, path)


def anfl_reference_scores(state, images, k):
    """ANFL's forward written from model/ANFL.py and model/graph.py, in eval mode."""
    resnet = torchvision.models.resnet50()
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, strict=False)
    resnet.eval()
    with torch.no_grad():
        x = images
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(resnet, name)(x)
        tokens = x.flatten(2).transpose(1, 2)  # b, hw, 2048

        def block(x, prefix):
            return torch.relu(_bn_eval(x @ state[f"{prefix}.fc.weight"].T + state[f"{prefix}.fc.bias"], state, f"{prefix}.bn"))

        x = block(tokens, "global_linear")
        n = state["head.sc"].shape[0]
        nodes = torch.stack([block(x, f"head.class_linears.{i}").mean(dim=1) for i in range(n)], dim=1)  # b, n, c
        similarity = nodes @ nodes.transpose(1, 2)
        threshold = similarity.topk(k, dim=-1).values[:, :, -1:]
        adjacency = (similarity >= threshold).float()
        degree = adjacency.sum(-1) ** -0.5
        normalised = degree.unsqueeze(2) * adjacency * degree.unsqueeze(1)
        v = nodes @ state["head.gnn.V.weight"].T + state["head.gnn.V.bias"]
        u = nodes @ state["head.gnn.U.weight"].T + state["head.gnn.U.bias"]
        nodes = torch.relu(nodes + _bn_eval(normalised @ v + u, state, "head.gnn.bnv", dim=1))
        prototypes = F.normalize(torch.relu(state["head.sc"]), dim=-1)
        return (F.normalize(nodes, dim=-1) * prototypes).sum(-1)


@pytest.mark.parametrize("n_aus, k", [(8, 3), (12, 4)], ids=["DISFA", "BP4D"])
def test_megraph_stage_one_checkpoint_loads_as_anfl_and_computes_the_reference(n_aus, k, tmp_path):
    state = _fill(megraph_shapes(n_aus, stage=1))
    path = tmp_path / "cur_model_fold1.pth"
    save_megraph(path, state)
    assert get_encoder_spec("megraph-au", pretrained=path).heads == {"au": n_aus}
    model = create_encoder("megraph-au", pretrained=path, input_size=64).eval()
    assert model.spec.options | {"input_size": 224} == {
        "n_aus": n_aus, "input_size": 224, "stage": 1, "neighbours": k, "edge_head": False}
    assert model.spec.fresh == () and "ANFL (stage 1) layout" in model.spec.init
    images = _images(64)
    with torch.no_grad():
        ours = model(images)["au"]
    assert torch.allclose(ours, anfl_reference_scores(state, images, k), atol=1e-5)


@pytest.mark.parametrize("n_aus", [8, 12], ids=["DISFA", "BP4D"])
def test_megraph_stage_two_checkpoint_loads_every_tensor_with_default_options(n_aus, tmp_path):
    state = _fill(megraph_shapes(n_aus, stage=2), seed=1)
    path = tmp_path / "MEFARG_resnet50_fold1.pth"
    save_megraph(path, state)
    model = create_encoder("megraph-au", pretrained=path)
    assert (model.spec.options["n_aus"], model.spec.options["stage"]) == (n_aus, 2)
    assert model.spec.fresh == ()
    mine = model.state_dict()
    assert set(mine) == set(state) - {"head.edge_fc.weight", "head.edge_fc.bias"}  # edge_fc feeds only au_edges
    assert all(torch.equal(mine[key], state[key]) for key in mine)
    with_edges = create_encoder("megraph-au", pretrained=path, edge_head=True)
    assert torch.equal(with_edges.head.edge_fc.weight, state["head.edge_fc.weight"])


def test_a_checkpoint_that_would_leave_tensors_fresh_is_refused(tmp_path):
    state = _fill(megraph_shapes(8, stage=2), seed=2)
    for key in [k for k in state if k.startswith("head.gnn.E")]:
        del state[key]  # a damaged or differently built file: 2 tensors have no value
    path = tmp_path / "damaged.pth"
    save_megraph(path, state)
    with pytest.raises(AffbenchError, match=r"2 model tensors would keep their fresh initialisation \(head\.gnn\.E1"
                                            r".*pass partial_load=True"):
        create_encoder("megraph-au", pretrained=path)
    with pytest.warns(UserWarning, match="Partial load"):
        model = create_encoder("megraph-au", pretrained=path, partial_load=True)
    assert model.spec.fresh == ("head.gnn.E1.weight", "head.gnn.E2.weight")


# ----------------------------------------------------------------------------------------- ABAW3

ROIS, DIM = 17, 16  # 12 labelled AUs + 5 hidden AUs; AU_metric_dim


def _inception_backbone() -> dict[str, tuple]:
    """get_backbone_from_name('inception_v3'): torchvision's layers up to Mixed_6e in a Sequential."""
    with torch.device("meta"):
        inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    shapes = {}
    for key, value in inception.state_dict().items():
        layer, rest = key.split(".", 1)
        if layer in trunks.INCEPTION_TO_MIXED_6E:
            shapes[f"backbone_CNN.{trunks.INCEPTION_TO_MIXED_6E.index(layer)}.{rest}"] = tuple(value.shape)
    return shapes


def multiemotionnet_shapes() -> dict[str, tuple]:
    """Multitask_EmotionNet of models/static_linear_model.py, tasks AU, EXPR, VA."""
    shapes = {**_inception_backbone(), **_conv("AU_attention_convs.0", 4 * ROIS, 768, 3), **_bn("AU_attention_convs.1", 4 * ROIS),
              **_conv("AU_attention_convs.3", ROIS, 4 * ROIS, 1), **_bn("AU_attention_convs.4", ROIS),
              **_conv("AU_attention_map_module.0", ROIS, ROIS, 1), **_conv("AU_attention_classification_module.0", ROIS, ROIS, 1)}
    for u in range(ROIS):
        shapes.update({**_conv(f"AU_Metric_Modules.{u}.Conv1.0", DIM, 768, 3), **_bn(f"AU_Metric_Modules.{u}.Conv1.1", DIM),
                       **_conv(f"AU_Metric_Modules.{u}.Conv2.0", DIM, DIM, 1), **_bn(f"AU_Metric_Modules.{u}.Conv2.1", DIM),
                       **_linear(f"AU_Metric_Modules.{u}.fc", DIM, DIM)})
        shapes.update(_linear(f"transformation_matrices.{u}", DIM, DIM, bias=False))
    shapes["positional_encoding.pos_embedding"] = (5000, 1, DIM)
    shapes.update({"MHA.self_attn.in_proj_weight": (3 * DIM, DIM), "MHA.self_attn.in_proj_bias": (3 * DIM,),
                   **_linear("MHA.self_attn.out_proj", DIM, DIM), **_linear("MHA.linear1", 1024, DIM),
                   **_linear("MHA.linear2", DIM, 1024), "MHA.norm1.weight": (DIM,), "MHA.norm1.bias": (DIM,),
                   "MHA.norm2.weight": (DIM,), "MHA.norm2.bias": (DIM,)})
    shapes.update({**_linear("emotion_classifiers.0.fc", 12, DIM), **_linear("emotion_classifiers.1", 8, DIM),
                   **_linear("emotion_classifiers.2", 2, DIM)})
    return shapes


def baseline_shapes() -> dict[str, tuple]:
    """Baseline_Model of models/baseline_model.py, tasks AU, EXPR, VA."""
    shapes = _inception_backbone()
    for au in range(12):
        shapes.update(_linear(f"emotion_metric_modules.0.{au}.0", DIM, 768))
    shapes.update({**_linear("emotion_metric_modules.1.0", DIM, 768), **_linear("emotion_metric_modules.2.0", DIM, 768),
                   **_linear("emotion_classifiers.0.fc", 12, DIM), **_linear("emotion_classifiers.1", 8, DIM),
                   **_linear("emotion_classifiers.2", 2, DIM)})
    return shapes


def save_lightning(path, state, prefix="") -> None:
    """What pytorch_lightning's ModelCheckpoint writes (the parts that matter here)."""
    torch.save({
        "epoch": 3, "global_step": 12000, "pytorch-lightning_version": "1.5.10",
        "state_dict": {prefix + k: v for k, v in state.items()},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_total', 'mode': 'max'}": {
            "monitor": "val_total", "best_model_score": torch.tensor(1.21), "best_model_path": "model-epoch=03.ckpt"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "momentum": 0.9, "params": [0, 1]}]}],
        "lr_schedulers": [{"T_max": 10000, "last_epoch": 12000}],
    }, path)


@pytest.mark.parametrize("prefix", ["", "model."], ids=["module", "wrapped"])
def test_abaw3_multiemotionnet_loads_with_default_options(prefix, tmp_path):
    state = _fill(multiemotionnet_shapes(), seed=3)
    path = tmp_path / "last.ckpt"
    save_lightning(path, state, prefix)
    model = create_encoder("smm-emotionnet", pretrained=path).eval()
    assert model.spec.options["head_bias"] is True and model.spec.fresh == ()
    assert "ABAW3 MultiEmotionNet layout" in model.spec.init
    loaded = sum(t.numel() for t in model.state_dict().values())
    unused = sum(state[k].numel() for k in state if k.startswith(("AU_attention_classification", "positional_encoding")))
    assert loaded == sum(t.numel() for t in state.values()) - unused

    # The heads, from the reference's forward: AUClassifier = per-AU dot product + bias on the first
    # 12 transformer outputs; EXPR / VA = linear layers on the mean of the per-ROI projections.
    captured = {}
    model.transformer.register_forward_hook(lambda m, i, o: captured.__setitem__("signs", o))
    rois = []
    for embed in model.roi_embeddings:
        embed.register_forward_hook(lambda m, i, o: rois.append(o))
    with torch.no_grad():
        out = model(_images(75))
        # The ROI embedding and positions: conv blocks of AU_Metric_Modules.0 on x * a + x, GAP, fc.
        features = model.trunk(_images(75))
        x1 = features
        for index in (0, 1, 2, 3, 4, 5):
            x1 = model.roi_attention[index](x1)
        attention = torch.sigmoid(F.conv2d(x1, state["AU_attention_map_module.0.weight"], state["AU_attention_map_module.0.bias"]))
        x = features * attention[:, :1] + features
        x = torch.relu(_bn_eval(F.conv2d(x, state["AU_Metric_Modules.0.Conv1.0.weight"], state["AU_Metric_Modules.0.Conv1.0.bias"], padding=1),
                                state, "AU_Metric_Modules.0.Conv1.1", dim=1))
        x = torch.relu(_bn_eval(F.conv2d(x, state["AU_Metric_Modules.0.Conv2.0.weight"], state["AU_Metric_Modules.0.Conv2.0.bias"]),
                                state, "AU_Metric_Modules.0.Conv2.1", dim=1))
        roi0 = x.mean(dim=(2, 3)) @ state["AU_Metric_Modules.0.fc.weight"].T + state["AU_Metric_Modules.0.fc.bias"]
    assert torch.allclose(rois[0], roi0, atol=1e-4)
    signs = captured["signs"]
    au = (signs[:, :12] * state["emotion_classifiers.0.fc.weight"]).sum(-1) + state["emotion_classifiers.0.fc.bias"]
    assert torch.allclose(out["au"], au, atol=1e-5)
    messages = torch.stack([r @ state[f"transformation_matrices.{u}.weight"].T for u, r in enumerate(rois)]).mean(0)
    assert torch.allclose(out["expression"], messages @ state["emotion_classifiers.1.weight"].T + state["emotion_classifiers.1.bias"], atol=1e-5)
    assert torch.allclose(out["va"], messages @ state["emotion_classifiers.2.weight"].T + state["emotion_classifiers.2.bias"], atol=1e-5)


def test_abaw3_baseline_loads_fully_into_inceptionv3_mtl_and_computes_the_per_au_branch(tmp_path):
    state = _fill(baseline_shapes(), seed=4)
    path = tmp_path / "Baseline_Model.ckpt"
    save_lightning(path, state)
    model = create_encoder("inceptionv3-mtl", pretrained=path).eval()
    assert model.spec.options["au_branch"] == "per-au" and model.spec.fresh == ()
    assert sum(t.numel() for t in model.state_dict().values()) == sum(t.numel() for t in state.values())
    with torch.no_grad():
        out = model(_images(75))
        pooled = model.trunk(_images(75)).amax(dim=(2, 3))  # F.max_pool2d over the whole map
    assert torch.equal(model.trunk.Mixed_6e.branch_pool.conv.weight, state["backbone_CNN.14.branch_pool.conv.weight"])
    au = torch.stack([
        torch.relu(pooled @ state[f"emotion_metric_modules.0.{i}.0.weight"].T + state[f"emotion_metric_modules.0.{i}.0.bias"])
        @ state["emotion_classifiers.0.fc.weight"][i] + state["emotion_classifiers.0.fc.bias"][i]
        for i in range(12)
    ], dim=1)
    assert torch.allclose(out["au"], au, atol=1e-5)
    expression = torch.relu(pooled @ state["emotion_metric_modules.1.0.weight"].T + state["emotion_metric_modules.1.0.bias"])
    expression = expression @ state["emotion_classifiers.1.weight"].T + state["emotion_classifiers.1.bias"]
    assert torch.allclose(out["expression"], expression, atol=1e-5)
    # The shared branch remains an option; an affbench checkpoint of it rebuilds it by default.
    shared = create_encoder("inceptionv3-mtl", au_branch="shared")
    own = tmp_path / "shared.pt"
    torch.save(shared.state_dict(), own)
    assert create_encoder("inceptionv3-mtl", pretrained=own).spec.options["au_branch"] == "shared"


# ----------------------------------------------------------------------------------------- CAER-S

STREAM = (3, 32, 64, 128, 256, 256)


def _encoder(prefix: str, channels) -> dict[str, tuple]:
    shapes = {}
    for i in range(len(channels) - 1):
        shapes.update(_conv(f"{prefix}.convs.{i}", channels[i + 1], channels[i], 3))
        shapes.update(_bn(f"{prefix}.bn.{i}", channels[i + 1]))
    return shapes


def caer_face_config_shapes() -> dict[str, tuple]:
    """model/model.py CAERSNet: every module is built whatever the configuration."""
    shapes = {**_encoder("two_stream_net.face_encoding_module", STREAM),
              **_encoder("two_stream_net.context_encoding_module", STREAM),
              **_encoder("two_stream_net.attention_inference_module", (256, 128, 1)),
              **_bn("fusion_net.face_bn", 256), **_bn("fusion_net.context_bn", 256)}
    for name, out, inp in (("face_1", 128, 256), ("face_2", 1, 128), ("context_1", 128, 256), ("context_2", 1, 128),
                           ("fc1", 128, 512), ("fc2", 7, 128)):
        shapes.update(_linear(f"fusion_net.{name}", out, inp))
    return shapes


def caer_orig_face_shapes() -> dict[str, tuple]:
    """model/orig_model.py CAERSNet(use_face=True, use_context=False, fusion_attention=False)."""
    return {**_encoder("two_stream_net.face_encoding_module", STREAM),
            **_conv("fusion_net.conv1", 128, 256, 1), **_conv("fusion_net.conv2", 7, 128, 1)}


def caer_face_reference(state, images, pools):
    """The face path of either model, eval mode: conv, BN, ReLU (max-pool after the first ``pools``)."""
    x = images
    for i in range(5):
        prefix = "two_stream_net.face_encoding_module"
        x = F.conv2d(x, state[f"{prefix}.convs.{i}.weight"], state[f"{prefix}.convs.{i}.bias"], padding=1)
        x = torch.relu(_bn_eval(x, state, f"{prefix}.bn.{i}", dim=1))
        if i < pools:
            x = F.max_pool2d(x, 2)
    return x.mean(dim=(2, 3))


class _Config:
    """Stands in for the trainer's parse_config.ConfigParser when the checkpoint is written."""


def save_caer_trainer(path, state, args, payload=None) -> None:
    """As base/base_trainer.py _save_checkpoint: arch, epoch, state_dict, optimizer, monitor_best, config."""
    module = types.ModuleType("parse_config")
    _Config.__module__, _Config.__qualname__ = "parse_config", "ConfigParser"
    module.ConfigParser = _Config
    sys.modules["parse_config"] = module
    try:
        config = _Config()
        config._config = collections.OrderedDict(name="CAERS_face", arch=collections.OrderedDict(type="CAERSNet", args=args))
        config.resume, config._save_dir = None, pathlib.PosixPath("saved/models/CAERS_face/0117_064933")
        config.log_levels = {0: 30, 1: 20, 2: 10}
        torch.save({"arch": "CAERSNet", "epoch": 40, "state_dict": state,
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
                    "monitor_best": 0.73, "config": payload if payload is not None else config}, path)
    finally:
        del sys.modules["parse_config"]


def test_caer_trainer_checkpoint_of_the_face_configuration_loads_and_computes_the_reference(tmp_path):
    state = _fill(caer_face_config_shapes(), seed=6)
    path = tmp_path / "model_best.pth"
    save_caer_trainer(path, state, collections.OrderedDict(concat=True, use_context=False))
    model = create_encoder("emotiram-f", pretrained=path).eval()
    assert model.spec.options["fusion"] == "linear" and model.spec.fresh == ()
    assert "no configuration saved" not in model.spec.init
    images = _images(96)
    with torch.no_grad():
        ours = model(images)["expression"]
        face = _bn_eval(caer_face_reference(state, images, pools=4), state, "fusion_net.face_bn")
        fused = torch.cat([face, torch.zeros_like(face)], dim=1)  # use_context=False zeroes the context half
        hidden = torch.relu(fused @ state["fusion_net.fc1.weight"].T + state["fusion_net.fc1.bias"])
        reference = hidden @ state["fusion_net.fc2.weight"].T + state["fusion_net.fc2.bias"]
    assert torch.allclose(ours, reference, atol=1e-5)

    # The same model as a plain state dict loads too, and says what it had to assume.
    plain = tmp_path / "face.pth"
    torch.save(state, plain)
    assert "no configuration saved" in create_encoder("emotiram-f", pretrained=plain).spec.init

    # A configuration whose prediction uses the context stream cannot be reproduced by a face model.
    context = tmp_path / "normal.pth"
    save_caer_trainer(context, state, collections.OrderedDict())
    with pytest.raises(AffbenchError, match="depends on the context stream"):
        create_encoder("emotiram-f", pretrained=context)


def test_caer_orig_model_face_stream_loads_as_a_plain_state_dict(tmp_path):
    state = _fill(caer_orig_face_shapes(), seed=7)
    path = tmp_path / "face_only.pth"
    torch.save(state, path)
    model = create_encoder("emotiram-f", pretrained=path).eval()
    assert model.spec.options["fusion"] == "conv" and model.spec.fresh == ()
    assert sum(t.numel() for t in model.state_dict().values()) == sum(t.numel() for t in state.values())
    images = _images(96)
    with torch.no_grad():
        face = caer_face_reference(state, images, pools=5)[:, :, None, None]
        hidden = torch.relu(F.conv2d(face, state["fusion_net.conv1.weight"], state["fusion_net.conv1.bias"]))
        reference = F.conv2d(hidden, state["fusion_net.conv2.weight"], state["fusion_net.conv2.bias"]).flatten(1)
        assert torch.allclose(model(images)["expression"], reference, atol=1e-5)


class _Payload:
    """A crafted 'config' whose unpickling would create a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


class _DisguisedPayload:
    """The allow-listed class name, pickled with arguments that would write a file if it were the real class."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _Config, (self.marker, "w")


def test_a_crafted_object_in_a_checkpoint_runs_nothing(tmp_path):
    state = _fill(caer_face_config_shapes(), seed=8)
    marker = tmp_path / "ran"
    path = tmp_path / "crafted.pth"
    save_caer_trainer(path, state, {}, payload=_Payload(marker))
    with pytest.raises(AffbenchError, match="Could not read checkpoint .* as tensors only.*it names exec"):
        create_encoder("emotiram-f", pretrained=path)
    assert not marker.exists()

    disguised = tmp_path / "disguised.pth"
    save_caer_trainer(disguised, state, {}, payload=_DisguisedPayload(marker))
    with pytest.raises(AffbenchError):
        create_encoder("emotiram-f", pretrained=disguised)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- published tags


def vgg_face_dag_shapes() -> dict[str, tuple]:
    """vgg_face_dag.py (Albanie's conversion): conv1_1 ... conv5_3, then fc6-fc8 as linear layers."""
    widths = {1: (3, 64, 64), 2: (64, 128, 128), 3: (128, 256, 256, 256), 4: (256, 512, 512, 512),
              5: (512, 512, 512, 512)}
    shapes = {}
    for block, channels in widths.items():
        for i in range(1, len(channels)):
            shapes.update(_conv(f"conv{block}_{i}", channels[i], channels[i - 1], 3))
    shapes.update({**_linear("fc6", 4096, 25088), **_linear("fc7", 4096, 4096), **_linear("fc8", 2622, 4096)})
    return shapes


@pytest.mark.parametrize("tag, n_aus", [("megraph-au/resnet50-disfa-fold1", 8), ("megraph-au/resnet50-bp4d-fold3", 12)])
def test_megraph_release_tags_load_their_layout_and_refuse_another_release(tag, n_aus, tmp_path):
    released = tmp_path / "released.pth"
    save_megraph(released, _fill(megraph_shapes(n_aus, stage=2), seed=9))
    model = create_encoder(tag, pretrained=released)
    assert model.spec.published == tag and model.spec.heads == {"au": n_aus} and model.spec.fresh == ()
    assert model.spec.init.startswith(tag) and "MEFL (stage 2)" in model.spec.init
    other = tmp_path / "other_dataset.pth"
    save_megraph(other, _fill(megraph_shapes(20 - n_aus, stage=2), seed=9))
    with pytest.raises(AffbenchError, match=rf"is not a {tag} checkpoint: it holds a megraph-au model with "
                                            rf"n_aus={20 - n_aus}, where {tag} has n_aus={n_aus}"):
        create_encoder(tag, pretrained=other)
    stage1 = tmp_path / "stage1.pth"
    save_megraph(stage1, _fill(megraph_shapes(n_aus, stage=1), seed=9))
    with pytest.raises(AffbenchError, match=rf"is not a {tag} checkpoint: .*stage=1, where {tag} has stage=2"):
        create_encoder(tag, pretrained=stage1)


def test_a_tag_needs_the_released_file_and_names_it():
    with pytest.raises(AffbenchError, match="pass pretrained=PATH, your copy of MEFARG_resnet50_BP4D_fold2.pth"):
        create_encoder("megraph-au/resnet50-bp4d-fold2")
    with pytest.raises(AffbenchError, match="Unknown published model 'megraph-au/swin-bp4d-fold3'; valid"):
        create_encoder("megraph-au/swin-bp4d-fold3", pretrained="x.pth")


def test_abaw3_tag_loads_the_multiemotionnet_layout_and_refuses_the_baseline(tmp_path):
    path = tmp_path / "men.ckpt"
    save_lightning(path, _fill(multiemotionnet_shapes(), seed=3), "model.")
    model = create_encoder("abaw3-men/smm", pretrained=path)
    assert model.spec.published == "abaw3-men/smm" and model.spec.heads == {"au": 12, "expression": 8, "va": 2}
    baseline = tmp_path / "baseline.ckpt"
    save_lightning(baseline, _fill(baseline_shapes(), seed=4))
    with pytest.raises(AffbenchError, match=r"is not a abaw3-men/smm checkpoint: .*does not fit"):
        create_encoder("abaw3-men/smm", pretrained=baseline)


def test_caer_tag_loads_the_face_configuration_and_refuses_the_context_model(tmp_path):
    path = tmp_path / "model_best.pth"
    save_caer_trainer(path, _fill(caer_face_config_shapes(), seed=6), collections.OrderedDict(concat=True, use_context=False))
    assert create_encoder("caer-net-s/face", pretrained=path).spec.published == "caer-net-s/face"
    orig = tmp_path / "orig.pth"
    torch.save(_fill(caer_orig_face_shapes(), seed=6), orig)
    assert create_encoder("caer-net-s/face", pretrained=orig).spec.options["fusion"] == "conv"
    context = tmp_path / "context.pth"
    save_caer_trainer(context, _fill(caer_face_config_shapes(), seed=6), collections.OrderedDict())
    with pytest.raises(AffbenchError, match="is not a caer-net-s/face checkpoint: .*context stream"):
        create_encoder("caer-net-s/face", pretrained=context)


def test_vggface_tag_loads_the_dag_conversion_with_its_normalisation_and_refuses_another_file(tmp_path):
    path = tmp_path / "vgg_face_dag.pth"
    state = {k: torch.zeros(shape) for k, shape in vgg_face_dag_shapes().items()}  # values do not matter here
    torch.save(state, path)
    model = create_encoder("vggface/dag", pretrained=path)
    assert model.spec.published == "vggface/dag" and model.spec.options["normalization"] == "vggface"
    assert model.spec.fresh == ("classifier.6.weight", "classifier.6.bias")  # fc8 (identities) is not used
    other = tmp_path / "caer.pth"
    torch.save(_fill(caer_orig_face_shapes(), seed=6), other)
    with pytest.raises(AffbenchError, match=r"is not a vggface/dag checkpoint: .*shares no weights"):
        create_encoder("vggface/dag", pretrained=other)


@pytest.mark.parametrize("dataset", ["disfa", "bp4d"])
def test_megraph_tags_say_which_subjects_they_were_trained_on_as_the_protocol_does(dataset):
    import importlib

    from affbench.encoders.published import get_published, group_tags

    protocol = importlib.import_module(f"affbench.pipelines.{dataset}").PROTOCOL
    folds = group_tags(f"megraph-au/resnet50-{dataset}")
    assert sorted(folds) == list(protocol.split.folds)
    every = {s for subjects in protocol.split.parts.values() for s in subjects}
    for fold, tag in folds.items():
        published = get_published(tag)
        tested = {s for part in protocol.split.test_parts[fold] for s in protocol.split.parts[part]}
        assert set(published.trained_subjects) == every - tested
        task = protocol.task("au-detection")
        assert published.tasks[0].label_names == tuple(task.label_names)


def test_export_model_by_tag_fills_labels_framing_and_provenance(tmp_path):
    import hashlib

    from click.testing import CliRunner

    from affbench.cli import app

    path = tmp_path / "model_best.pth"
    save_caer_trainer(path, _fill(caer_face_config_shapes(), seed=6), collections.OrderedDict(concat=True, use_context=False))
    out = tmp_path / "caer.pt"
    result = CliRunner().invoke(app, ["export-model", "--published", "caer-net-s/face", "--pretrained", str(path),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    description = torch.load(out, weights_only=True)["affbench_model"]
    assert description["tasks"][0]["label_names"] == ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert (description["crop_size"], description["eval_crop"], description["encoder"]) == (96, 1.0, "emotiram-f")
    assert description["trained_on"]["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert description["trained_on"]["published"] == "caer-net-s/face"

    context = tmp_path / "context.pth"
    save_caer_trainer(context, _fill(caer_face_config_shapes(), seed=6), collections.OrderedDict())
    refused = CliRunner().invoke(app, ["export-model", "--published", "caer-net-s/face", "--pretrained", str(context),
                                       "--out", str(tmp_path / "no.pt")])
    assert refused.exit_code != 0 and "is not a caer-net-s/face checkpoint" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "no.pt").exists()


def test_list_models_shows_every_tag_with_its_file_and_fold():
    from click.testing import CliRunner

    from affbench.cli import app
    from affbench.encoders.published import list_published

    result = CliRunner().invoke(app, ["list", "models"])
    assert result.exit_code == 0, result.output
    for tag in list_published():
        assert f"\n{tag}\n" in "\n" + result.output
    assert "MEFARG_resnet50_DISFA_fold2.pth" in result.output
    fold1 = result.output.split("megraph-au/resnet50-disfa-fold1\n")[1].split("megraph-au/resnet50-disfa-fold2")[0]
    trained_on = next(line for line in fold1.splitlines() if line.startswith("  trained on"))
    assert "SN001" in trained_on and "SN003" not in trained_on  # SN003 is fold 1's test subject


def test_export_model_by_tag_names_every_task_of_a_multitask_release(tmp_path):
    from affbench.inference.bundle import export_model

    path = tmp_path / "men.ckpt"
    save_lightning(path, _fill(multiemotionnet_shapes(), seed=3), "model.")
    _, description = export_model(tmp_path / "men.pt", published="abaw3-men/smm", pretrained=path)
    assert [(t.name, t.output_key, len(t.label_names)) for t in description.tasks] == [
        ("au-detection", "au", 12), ("expression", "expression", 8), ("va", "va", 2)]
    assert description.tasks[1].label_names[-1] == "other" and description.crop_size == 112
    assert description.trained_on["dataset"] == "affwild2" and description.trained_on["fold"] is None
    with pytest.raises(AffbenchError, match="vggface/dag has no outputs of its own"):
        export_model(tmp_path / "vgg.pt", published="vggface/dag", pretrained=path)


@pytest.mark.parametrize("tag, dataset", [("abaw3-men/smm", "affwild2"), ("caer-net-s/face", "caer_s")])
def test_given_split_tags_name_their_outputs_as_the_protocol_does(tag, dataset):
    import importlib

    from affbench.encoders.published import get_published

    protocol = importlib.import_module(f"affbench.pipelines.{dataset}").PROTOCOL
    for task in get_published(tag).tasks:
        spec = protocol.task(task.name)
        assert (task.kind, task.output_key, task.label_names) == (spec.kind, spec.output_key, tuple(spec.label_names))
