"""Encoder registry and variants: build, shapes, gradients, checkpoints, and the papers' structure.

Everything runs on the CPU with batch 1-2 and small inputs where the architecture allows it; nothing
touches the network (ImageNet tests point the torch cache at an empty or generated folder).
"""

from __future__ import annotations

import math
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from affbench.encoders import fan, megraph, trunks, weights
from affbench.encoders.registry import (
    EncoderSpec,
    count_parameters,
    create_encoder,
    get_encoder_spec,
    list_encoders,
)
from affbench.encoders.weights import load_checkpoint
from affbench.errors import AffbenchError, UnknownNameError

EXPECTED_VARIANTS = {
    "emotiram-f", "fan-au", "emotiram-fau", "megraph-au", "emotiram-fau-megraph",
    "smm-emotionnet", "inceptionv3-mtl", "vggface",
}

#: Per variant: options and image side for the generic tests, as small as each architecture allows
#: (the heatmap models fix their size at build time; the others pool globally).
SMALL = {
    "emotiram-f": ({}, 96),
    "fan-au": ({"input_size": 64}, 64),
    "emotiram-fau": ({}, 96),
    "megraph-au": ({}, 64),
    "emotiram-fau-megraph": ({}, 64),
    "smm-emotionnet": ({}, 75),
    "inceptionv3-mtl": ({}, 75),
    "vggface": ({}, 64),
}


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _images(batch: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------- registry


def test_every_seed_variant_is_registered():
    assert set(list_encoders()) == EXPECTED_VARIANTS
    assert set(SMALL) == EXPECTED_VARIANTS


def test_unknown_name_and_bad_options_are_one_sentence_errors():
    with pytest.raises(UnknownNameError, match="valid encoders are: .*fan-au"):
        create_encoder("resnet-9000")
    with pytest.raises(UnknownNameError):
        get_encoder_spec("resnet-9000")
    with pytest.raises(AffbenchError, match="has no option 'n_clases'"):
        create_encoder("emotiram-f", n_clases=3)
    with pytest.raises(AffbenchError, match="task must be one of"):
        get_encoder_spec("vggface", task="pose")
    with pytest.raises(AffbenchError, match="n_classes must be a positive integer"):
        get_encoder_spec("emotiram-fau", n_classes=0)
    with pytest.raises(AffbenchError, match="multiple of 32"):
        get_encoder_spec("fan-au", input_size=100)
    with pytest.raises(AffbenchError, match="no AU point rule for AU99"):
        get_encoder_spec("fan-au", aus=(1, 99))
    with pytest.raises(AffbenchError, match="pretrained must be None, 'imagenet' or a checkpoint path"):
        create_encoder("emotiram-f", pretrained=3)
    with pytest.raises(AffbenchError, match="no ImageNet-pretrained part"):
        create_encoder("emotiram-f", pretrained="imagenet")


def test_bare_decorator_registers_a_factory_and_specs_it_on_the_meta_device(monkeypatch):
    from affbench.encoders import registry
    from affbench.encoders.registry import Encoder, register_encoder

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    built_on = []

    class Probe(Encoder):
        def __init__(self, n_classes):
            super().__init__()
            self.spec = EncoderSpec(
                name="probe-net", family="test", input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3,
                heads={"expression": n_classes}, au_output=None, options={"n_classes": n_classes},
            )
            self.fc = nn.Linear(3, n_classes)
            built_on.append(self.fc.weight.device.type)

        def forward(self, images):
            return {"expression": self.fc(images.mean(dim=(2, 3)))}

    @register_encoder
    def probe_net(*, n_classes: int = 3, pretrained=None):
        """A test-only encoder."""
        return Probe(n_classes)

    assert "probe-net" in list_encoders()
    assert get_encoder_spec("probe-net", n_classes=5).heads == {"expression": 5}
    assert built_on == ["meta"]
    assert create_encoder("probe-net")(torch.zeros(2, 3, 8, 8))["expression"].shape == (2, 3)


def test_spec_follows_options_without_building():
    assert get_encoder_spec("vggface", task="va").heads == {"va": 2}
    assert get_encoder_spec("vggface", task="expression", n_classes=7).heads == {"expression": 7}
    assert get_encoder_spec("vggface", task="expression").au_output is None
    assert get_encoder_spec("megraph-au", n_aus=12).heads == {"au": 12}
    spec = get_encoder_spec("fan-au", aus=(6, 12))
    assert spec.heads == {"au": 2, "heatmaps": 4} and spec.aus == (6, 12) and spec.heatmap_size == 64
    assert get_encoder_spec("smm-emotionnet", n_classes=7).heads == {"au": 12, "expression": 7, "va": 2}
    assert get_encoder_spec("emotiram-fau-megraph").au_output == "probabilities"
    assert get_encoder_spec("smm-emotionnet").au_output == "logits"
    assert get_encoder_spec("fan-au").au_output == "intensities"


@pytest.mark.parametrize("name", sorted(EXPECTED_VARIANTS))
def test_paper_defaults(name):
    expected = {
        "emotiram-f": (96, {"expression": 7}),
        "fan-au": (256, {"au": 12, "heatmaps": 24}),
        "emotiram-fau": (96, {"expression": 7, "au": 5, "heatmaps": 10}),
        "megraph-au": (224, {"au": 8}),
        "emotiram-fau-megraph": (224, {"au": 8, "expression": 7}),
        "smm-emotionnet": (299, {"au": 12, "expression": 8, "va": 2}),
        "inceptionv3-mtl": (299, {"au": 12, "expression": 8, "va": 2}),
        "vggface": (224, {"au": 12}),
    }[name]
    spec = get_encoder_spec(name)
    assert (spec.input_size, spec.heads) == expected
    assert spec.init == "random"
    assert len(spec.mean) == len(spec.std) == 3


def test_list_encoders_cli_prints_every_variant_with_its_parameter_count():
    from affbench.cli import app

    result = CliRunner().invoke(app, ["list", "encoders"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:] if not line.startswith(" ")}
    assert set(lines) == EXPECTED_VARIANTS
    assert "heatmaps=24" in lines["fan-au"] and " 256 " in lines["fan-au"]
    assert lines["megraph-au"].split()[1] == "megraph"
    assert f"{count_parameters('emotiram-f'):,d}" in lines["emotiram-f"]


# ----------------------------------------------------------------------------------------- every variant


@pytest.mark.parametrize("name", sorted(EXPECTED_VARIANTS))
def test_variant_forward_backward_and_checkpoint_round_trip(name, tmp_path):
    options, side = SMALL[name]
    torch.manual_seed(0)
    model = create_encoder(name, **options)
    spec = model.spec
    assert isinstance(spec, EncoderSpec) and spec.name == name

    model.train()
    outputs = model(_images(2, side))
    assert set(outputs) == set(spec.heads)
    for key, size in spec.heads.items():
        if key == "heatmaps":
            assert side == spec.input_size  # heatmap models are built for one input size
            assert outputs[key].shape == (2, size, spec.heatmap_size, spec.heatmap_size)
            assert spec.heatmap_size == side // 4
        else:
            assert outputs[key].shape == (2, size)
        assert torch.isfinite(outputs[key]).all()
    sum(out.float().mean() for out in outputs.values()).backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    # Save, rebuild from spec.options with other random weights, load through load_checkpoint.
    model.eval()
    probe = _images(1, side, seed=1)
    with torch.no_grad():
        before = model(probe)
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    del model
    torch.manual_seed(1)
    rebuilt = create_encoder(name, **spec.options, pretrained=path).eval()
    assert rebuilt.spec.init.startswith(f"checkpoint {path.resolve()} (sha256 ")
    with torch.no_grad():
        after = rebuilt(probe)
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_checkpoint_of_another_variant_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "f.pt"
    torch.save(create_encoder("emotiram-f", n_classes=3).state_dict(), path)
    # Left out, the class count follows the checkpoint; asked for, a contradiction is refused.
    assert create_encoder("emotiram-f", pretrained=path).spec.heads == {"expression": 3}
    with pytest.raises(AffbenchError, match=r"checkpoint given is a n_classes=3 model, but n_classes=7 was asked"):
        create_encoder("emotiram-f", n_classes=7, pretrained=path)
    with pytest.raises(AffbenchError, match="shares no weights"):
        create_encoder("inceptionv3-mtl", pretrained=path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AffbenchError, match="Could not read checkpoint"):
        create_encoder("emotiram-f", pretrained=tmp_path / "junk.pt")
    with pytest.raises(AffbenchError, match="does not exist"):
        create_encoder("emotiram-f", pretrained=tmp_path / "missing.pt")


def test_partial_load_keeps_the_rest_and_says_so(tmp_path):
    path = tmp_path / "f.pt"
    torch.save({"state_dict": create_encoder("emotiram-f", n_classes=3).state_dict()}, path)
    model = create_encoder("emotiram-f")
    with pytest.warns(UserWarning, match="Partial load"):
        report = load_checkpoint(model, path, partial=True)
    assert report.mismatched and all(key.startswith("head.3.") for key in report.mismatched)
    assert "kept their fresh initialisation: head.3.weight" in model.spec.init
    assert model.spec.fresh == ("head.3.weight", "head.3.bias")


# ----------------------------------------------------------------------------------------- ImageNet weights


def _forbid_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("affbench tried to reach the network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name", ["megraph-au", "smm-emotionnet", "vggface"])
def test_imagenet_without_cached_file_is_a_clear_error_and_no_download(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _forbid_network(monkeypatch)
    with pytest.raises(AffbenchError, match=r"not in the torch cache: download https://.* and save it as .*checkpoints"):
        create_encoder(name, pretrained="imagenet")


def test_imagenet_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _forbid_network(monkeypatch)
    torch.manual_seed(3)
    reference = torchvision_resnet50_state()
    target = weights.hub_checkpoint_path(trunks.RESNET50_IMAGENET)
    assert target == tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    target.parent.mkdir(parents=True)
    torch.save(reference, target)
    model = create_encoder("emotiram-fau-megraph", pretrained="imagenet")
    assert "imagenet (torchvision ResNet50_Weights.IMAGENET1K_V1" in model.spec.init
    trunk = model.au_model.backbone.state_dict()
    assert torch.equal(trunk["layer4.2.conv3.weight"], reference["layer4.2.conv3.weight"])
    assert torch.equal(trunk["bn1.running_var"], reference["bn1.running_var"])


def torchvision_resnet50_state():
    import torchvision

    return torchvision.models.resnet50(weights=None).state_dict()


# ----------------------------------------------------------------------------------------- EmotiRAM-f


def test_emotiram_f_is_the_caer_net_s_face_stream():
    model = create_encoder("emotiram-f")
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert all(c.bias is not None for c in convs)  # conv with bias, then BN, as both CAER codes build it
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features.modules()) == 5
    head = [m for m in model.head if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in head] == [(256, 128, (1, 1)), (128, 7, (1, 1))]
    assert any(isinstance(m, nn.Dropout) for m in model.head)


# ----------------------------------------------------------------------------------------- Fan et al.


def test_emotiram_fau_bottleneck_and_heatmap_size():
    spec = get_encoder_spec("emotiram-fau")
    assert (spec.heads["heatmaps"], spec.heatmap_size, spec.aus) == (10, 24, (6, 10, 12, 14, 17))
    with torch.device("meta"):
        model = create_encoder("emotiram-fau")
    linears = [(m.in_features, m.out_features) for m in model.bottleneck if isinstance(m, nn.Linear)]
    assert linears == [(5760, 2048), (2048, 1024), (1024, 512), (512, 256), (256, 7)]
    assert sum(isinstance(m, nn.ReLU) for m in model.bottleneck) == 4


def test_fan_au_disfa_model_has_24_points_and_the_reference_scc_widths_at_256():
    spec = get_encoder_spec("fan-au")
    assert spec.aus == fan.DISFA_AUS and spec.heads["heatmaps"] == 24 and spec.heatmap_size == 64
    with torch.device("meta"):
        model = create_encoder("fan-au")
    net = model.heatmap_net
    deconvs = [getattr(net, f"deconv{i}")[0] for i in (1, 2, 3)]
    assert [(d.in_channels, d.out_channels, d.kernel_size, d.stride) for d in deconvs] == [
        (2048, 256, (4, 4), (2, 2)), (256, 128, (4, 4), (2, 2)), (128, 64, (4, 4), (2, 2)),
    ]
    # Fan et al.'s conv1/conv2/conv3 map 2*H*W edge values to H*W: 16x16, 32x32, 64x64 maps.
    edge_convs = [getattr(net, f"scc{i}").edge_conv for i in (1, 2, 3)]
    assert [(c.in_channels, c.out_channels) for c in edge_convs] == [(512, 256), (2048, 1024), (8192, 4096)]
    assert all(getattr(net, f"scc{i}").k == 7 for i in (1, 2, 3))
    assert (net.heatmap_head.in_channels, net.heatmap_head.out_channels) == (64, 24)


def _naive_scc(module: fan.SemanticCorrespondence, x: torch.Tensor) -> torch.Tensor:
    """EdgeConv written out edge by edge: kNN among channels, conv over [x_i, x_j - x_i], max."""
    b, c, h, w = x.shape
    nodes = x.flatten(2)
    distance = torch.cdist(nodes, nodes)
    idx = distance.topk(module.k, dim=-1, largest=False).indices
    out = torch.empty(b, c, h * w)
    for n in range(b):
        for i in range(c):
            edge = torch.cat([nodes[n, i].expand(module.k, -1), nodes[n, idx[n, i]] - nodes[n, i]], dim=1)
            z = module.edge_conv(edge.t().reshape(1, 2 * h * w, 1, module.k))
            out[n, i] = torch.relu(module.bn(z)).amax(dim=-1).flatten()
    return out.view(b, c, h, w)


def test_semantic_correspondence_equals_edge_by_edge_edgeconv_over_channels():
    torch.manual_seed(0)
    scc = fan.SemanticCorrespondence(spatial=4, k=3)
    scc.bn.running_mean.uniform_(-0.5, 0.5)
    scc.bn.running_var.uniform_(0.5, 2.0)
    scc.eval()
    x = torch.randn(2, 9, 4, 4)
    with torch.no_grad():
        assert torch.allclose(scc(x), _naive_scc(scc, x), atol=1e-5)
        # Nodes are channels: permuting the channels permutes the output the same way.
        perm = torch.randperm(9)
        assert torch.allclose(scc(x[:, perm]), scc(x)[:, perm], atol=1e-5)


def test_au_points_follow_the_landmarks():
    lm = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.0], [45.0, 90.0], [75.0, 90.0]])
    pts = fan.au_points(lm, [12, 1, 26, 6])
    assert pts.shape == (8, 2)
    assert np.allclose(pts[0:2], lm[3:5])  # AU12 on the mouth corners
    d = 40.0
    assert np.allclose(pts[2], [40 + 0.2 * d, 50 - 0.65 * d]) and np.allclose(pts[3], [80 - 0.2 * d, 50 - 0.65 * d])
    assert np.allclose(pts[4:6, 1], 90 + 0.35 * d)  # AU26 below the mouth
    assert np.allclose(pts[4, 0] + pts[5, 0], 120.0)  # symmetric about the midline x = 60
    assert (pts[6:8, 1] > 50).all()  # AU6 on the cheeks, below the eyes

    # Rotating the face by 90 degrees (about the origin) rotates every point with it.
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    rotated = fan.au_points(lm @ rot.T, [12, 1, 26, 6])
    assert np.allclose(rotated, pts @ rot.T)
    # Torch in, torch out, batched, flat (B, 10) accepted.
    batch = fan.au_points(torch.tensor(lm, dtype=torch.float32).reshape(1, 10).repeat(3, 1), fan.DISFA_AUS)
    assert isinstance(batch, torch.Tensor) and batch.shape == (3, 24, 2)


def test_heatmap_targets_peak_at_the_point_with_height_intensity():
    points = torch.tensor([[[100.0, 60.0], [30.0, 200.0]]])
    targets = fan.heatmap_targets(points, torch.tensor([[2.5, 4.0]]), heatmap_size=64, input_size=256)
    assert targets.shape == (1, 2, 64, 64)
    for p, (x, y), height in ((0, (100, 60), 2.5), (1, (30, 200), 4.0)):
        row, col = divmod(int(targets[0, p].argmax()), 64)
        assert (col, row) == (math.floor(x / 4 + 0.5), math.floor(y / 4 + 0.5))
        assert float(targets[0, p].max()) == pytest.approx(height)
    # sigma 2: one heatmap pixel away the value is height * exp(-1/8)
    assert float(targets[0, 0, 15, 26]) == pytest.approx(2.5 * math.exp(-1 / 8))
    # Per-AU intensities are repeated for the AU's two points; zero intensity is an empty map.
    per_au = fan.heatmap_targets(points, torch.tensor([[0.0]]), heatmap_size=64, input_size=256)
    assert per_au.abs().max() == 0
    with pytest.raises(ValueError, match="mask AUs"):
        fan.heatmap_targets(points, torch.tensor([[-1.0, 1.0]]), heatmap_size=64, input_size=256)


def test_heatmap_model_targets_and_intensity_readout_agree():
    with torch.device("meta"):
        spec_model = create_encoder("fan-au")
    lm = torch.tensor([[[96.0, 110.0], [160.0, 110.0], [128.0, 150.0], [104.0, 190.0], [152.0, 190.0]]])
    intensities = torch.arange(12, dtype=torch.float32).view(1, 12) / 3
    targets = spec_model.heatmap_targets(lm, intensities)
    assert targets.shape == (1, 24, 64, 64)
    # The model reads an AU's intensity as the mean of its two heatmap maxima: the targets give back the labels.
    assert torch.allclose(fan.au_intensities(targets), intensities)
    # Landmarks of a 512 crop are scaled to the 256 input.
    assert torch.allclose(spec_model.heatmap_targets(lm * 2, intensities, image_size=512), targets)


def test_emotiram_fau_starts_from_a_fan_au_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = create_encoder("fan-au", input_size=96)
    path = tmp_path / "fan-au.pt"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="heatmap_head"):
        model = create_encoder("emotiram-fau", au_checkpoint=path)
    mine, theirs = model.heatmap_net.state_dict(), source.heatmap_net.state_dict()
    for key in ("trunk.conv1.weight", "trunk.layer4.2.bn3.running_mean", "deconv3.0.weight", "scc3.edge_conv.weight"):
        assert torch.equal(mine[key], theirs[key]), key
    assert mine["heatmap_head.weight"].shape == (10, 64, 1, 1)  # BP4D points, not the 24 of DISFA
    assert "au_checkpoint (fan-au) checkpoint" in model.spec.init and "heatmap_head.weight" in model.spec.init

    # With DISFA's AUs everything of the AU model carries over, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = create_encoder("emotiram-fau", aus=fan.DISFA_AUS, au_checkpoint=path)
    assert torch.equal(full.heatmap_net.heatmap_head.weight, source.heatmap_net.heatmap_head.weight)

    # Another input size changes the SCC widths: refused, naming the option that would load the rest.
    small, small_source = tmp_path / "fan-au-64.pt", create_encoder("fan-au", input_size=64)
    torch.save(small_source.state_dict(), small)
    with pytest.raises(AffbenchError, match=r"mismatched \(heatmap_net\.scc1.*input_size=96.*pass partial_load=True"):
        create_encoder("emotiram-fau", aus=fan.DISFA_AUS, au_checkpoint=small)
    # With the option, the rest loads, and the record lists the SCC tensors that stayed fresh.
    with pytest.warns(UserWarning, match="scc"):
        partial = create_encoder("emotiram-fau", aus=fan.DISFA_AUS, au_checkpoint=small, partial_load=True)
    assert {f"heatmap_net.scc{i}.edge_conv.weight" for i in (1, 2, 3)} <= set(partial.spec.fresh)
    assert torch.equal(partial.heatmap_net.trunk.conv1.weight, small_source.heatmap_net.trunk.conv1.weight)
    assert not any("scc" in name for name in model.spec.fresh)  # the same input size left none fresh

    with pytest.raises(AffbenchError, match="not a fan-au checkpoint"):
        bad = tmp_path / "caer.pt"
        torch.save(create_encoder("emotiram-f").state_dict(), bad)
        create_encoder("emotiram-fau", au_checkpoint=bad)
    with pytest.raises(AffbenchError, match="either pretrained or au_checkpoint"):
        create_encoder("emotiram-fau", au_checkpoint=path, pretrained="imagenet")


# ----------------------------------------------------------------------------------------- ME-GraphAU

#: Key names of the public ME-GraphAU ResNet-50 model (model/MEFL.py MEFARG), 8 DISFA AUs.
MEGRAPH_REFERENCE_KEYS = {
    "backbone.conv1.weight": (64, 3, 7, 7),
    "backbone.layer4.2.bn3.running_var": (2048,),
    "global_linear.fc.weight": (512, 2048),
    "global_linear.bn.running_mean": (512,),
    "head.class_linears.7.fc.weight": (512, 512),
    "head.class_linears.0.bn.weight": (512,),
    "head.edge_extractor.FAM.linear_q.weight": (256, 512),
    "head.edge_extractor.ARM.linear_k.bias": (256,),
    "head.edge_extractor.ARM.linear_v.weight": (512, 512),
    "head.edge_extractor.edge_proj.weight": (512, 512),
    "head.edge_extractor.bn.running_mean": (64,),
    "head.gnn.U1.weight": (512, 512),
    "head.gnn.E2.weight": (512, 512),
    "head.gnn.bnv1.weight": (8,),
    "head.gnn.bne2.running_var": (64,),
    "head.sc": (8, 512),
    "head.edge_fc.weight": (4, 512),
}


def test_megraph_state_dict_uses_the_reference_key_names():
    with torch.device("meta"):
        model = create_encoder("megraph-au", edge_head=True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in MEGRAPH_REFERENCE_KEYS.items():
        assert shapes.get(key) == shape, key


def test_megraph_loads_a_public_style_checkpoint_and_ignores_its_edge_head(tmp_path):
    torch.manual_seed(0)
    source = create_encoder("megraph-au", edge_head=True)
    path = tmp_path / "MEFARG_resnet50_DISFA_fold1.pth"
    # The reference saves {'epoch', 'state_dict', 'optimizer'} from a DataParallel model.
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    model = create_encoder("megraph-au", pretrained=path)
    assert "MEFL (stage 2) layout" in model.spec.init and "head.edge_fc.weight" in model.spec.init
    assert torch.equal(model.head.sc, source.head.sc)
    assert torch.equal(model.head.gnn.bne1.running_var, source.head.gnn.bne1.running_var)


def test_megraph_stage_two_starts_from_a_stage_one_checkpoint_only_when_asked(tmp_path):
    torch.manual_seed(0)
    stage1 = create_encoder("megraph-au", stage=1)
    assert hasattr(stage1.head.gnn, "U") and not hasattr(stage1.head, "edge_extractor")
    path = tmp_path / "stage1.pt"
    torch.save(stage1.state_dict(), path)
    stage2 = create_encoder("megraph-au", stage1_checkpoint=path)
    assert stage2.spec.options["stage"] == 2
    assert torch.equal(stage2.head.class_linears[3].fc.weight, stage1.head.class_linears[3].fc.weight)
    assert "ANFL (stage 1) layout" in stage2.spec.init and "head.edge_extractor" in stage2.spec.init
    # MEFL is new by request: 19 tensors of the edge extractor, 30 of the gated GCN.
    assert len(stage2.spec.fresh) == 49 and all(k.startswith(("head.edge_extractor.", "head.gnn.")) for k in stage2.spec.fresh)
    with pytest.raises(AffbenchError, match="stage=1 model, but stage=2 was asked"):
        create_encoder("megraph-au", stage=2, pretrained=path)
    stage2_file = tmp_path / "stage2.pt"
    torch.save(stage2.state_dict(), stage2_file)
    with pytest.raises(AffbenchError, match="not a stage-1"):
        create_encoder("megraph-au", stage1_checkpoint=stage2_file)


def test_megraph_au_scores_are_cosine_similarities_in_unit_interval():
    torch.manual_seed(0)
    model = create_encoder("megraph-au").eval()
    with torch.no_grad():
        au = model(_images(2, 64))["au"]
    assert ((au >= 0) & (au <= 1)).all()
    assert megraph.edge_targets(torch.tensor([[1, 0, 1]])).tolist() == [[3, 2, 3, 1, 0, 1, 3, 2, 3]]


def test_facial_graph_links_each_node_to_its_k_most_similar():
    graph = megraph.FacialGraph(dim=2, n_aus=3, neighbours=2).eval()
    nodes = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])
    with torch.no_grad():
        out = graph(nodes)
        # Dot-product 2-NN rows: node 0 -> {0, 1}, node 1 -> {0, 1}, node 2 -> {1, 2}; every degree
        # is 2, so D^-1/2 A D^-1/2 weighs each neighbour 1/2. A fresh BN in eval mode divides by sqrt(1 + eps).
        v = graph.V(nodes[0])
        expected = torch.relu(nodes[0, 0] + ((v[0] + v[1]) / 2 + graph.U(nodes[0, 0])) / math.sqrt(1 + 1e-5))
    assert torch.allclose(out[0, 0], expected, atol=1e-6)


def test_emotiram_fau_megraph_starts_from_a_megraph_au_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = create_encoder("megraph-au")
    path = tmp_path / "megraph.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model = create_encoder("emotiram-fau-megraph", au_checkpoint=path)
    mine = model.au_model.state_dict()
    assert all(torch.equal(mine[key], value) for key, value in source.state_dict().items())
    assert model.expression_head.in_features == 8 and model.expression_head.out_features == 7
    with pytest.raises(AffbenchError, match="n_aus=8 model, but n_aus=12 was asked"):
        create_encoder("emotiram-fau-megraph", n_aus=12, au_checkpoint=path)
    # A stage-1 AU model gives a stage-1 AU part, nothing left fresh but the expression layer.
    stage1 = tmp_path / "stage1.pt"
    torch.save(create_encoder("megraph-au", stage=1).state_dict(), stage1)
    model = create_encoder("emotiram-fau-megraph", au_checkpoint=stage1)
    assert model.spec.options["stage"] == 1
    assert set(model.spec.fresh) == {"expression_head.weight", "expression_head.bias"}


# ----------------------------------------------------------------------------------------- InceptionV3 models


def test_inception_trunk_gives_768x17x17_at_299():
    trunk = trunks.inception_v3_to_mixed_6e().eval()
    assert list(trunk._modules)[-1] == "Mixed_6e"
    with torch.no_grad():
        assert trunk(_images(1, 299)).shape == (1, 768, 17, 17)


def test_smm_emotionnet_sizes_and_heads():
    torch.manual_seed(0)
    model = create_encoder("smm-emotionnet").eval()
    layer = model.transformer
    assert layer.self_attn.embed_dim == 16 and layer.self_attn.num_heads == 8
    assert (layer.linear1.in_features, layer.linear1.out_features) == (16, 1024)
    assert layer.activation is torch.nn.functional.gelu or getattr(layer, "activation_relu_or_gelu", 0) == 2
    assert len(model.roi_embeddings) == 17 and model.au_weight.shape == (12, 16)
    assert model.roi_attention[3].out_channels == 17 and model.roi_attention[0].out_channels == 68
    assert len(model.message_maps) == 17 and all(m.bias is None for m in model.message_maps)
    assert model.expression_head.bias is None and model.va_head.bias is None
    assert model.expression_head.out_features == 8 and model.va_head.out_features == 2
    assert not hasattr(model, "au_bias")
    table = model.positions
    assert table.shape == (17, 16)
    assert torch.allclose(table[0], torch.tensor([0.0, 1.0] * 8))
    assert float(table[3, 2]) == pytest.approx(math.sin(3 / 10000 ** (2 / 16)))

    captured = {}
    model.transformer.register_forward_hook(lambda m, i, o: captured.__setitem__("signs", o))
    rois = []
    for embed in model.roi_embeddings:
        embed.register_forward_hook(lambda m, i, o: rois.append(o))
    with torch.no_grad():
        out = model(_images(2, 75))
    signs = captured["signs"]
    assert signs.shape == (2, 17, 16)
    assert torch.allclose(out["au"], (signs[:, :12] * model.au_weight).sum(-1), atol=1e-6)
    mean_message = torch.stack([m(f) for m, f in zip(model.message_maps, rois)]).mean(0)
    assert torch.allclose(out["expression"], mean_message @ model.expression_head.weight.t(), atol=1e-6)
    assert torch.allclose(out["va"], mean_message @ model.va_head.weight.t(), atol=1e-6)


def _abaw3_state(model) -> dict:
    """A checkpoint in the layout of ABAW3_MultiEmotionNet's static_linear_model (names by hand)."""
    own = model.state_dict()
    state = {}
    for key, value in own.items():
        if key.startswith("trunk."):
            name, rest = key[len("trunk."):].split(".", 1)
            key = f"backbone_CNN.{trunks.INCEPTION_TO_MIXED_6E.index(name)}.{rest}"
        else:
            key = (key.replace("roi_attention.", "AU_attention_convs.")
                   .replace("attention_maps.", "AU_attention_map_module.")
                   .replace("roi_embeddings.", "AU_Metric_Modules.").replace(".conv1.", ".Conv1.").replace(".conv2.", ".Conv2.")
                   .replace("transformer.", "MHA.").replace("message_maps.", "transformation_matrices.")
                   .replace("expression_head.", "emotion_classifiers.1.").replace("va_head.", "emotion_classifiers.2."))
            key = {"au_weight": "emotion_classifiers.0.fc.weight", "au_bias": "emotion_classifiers.0.fc.bias"}.get(key, key)
        state[key] = torch.randn_like(value) if value.is_floating_point() else value
    state["AU_attention_classification_module.0.weight"] = torch.randn(17, 17, 1, 1)
    state["AU_attention_classification_module.0.bias"] = torch.randn(17)
    state["positional_encoding.pos_embedding"] = torch.randn(5000, 1, 16)
    return state


def test_smm_loads_an_abaw3_checkpoint(tmp_path):
    template = create_encoder("smm-emotionnet", head_bias=True)
    state = _abaw3_state(template)
    assert "AU_Metric_Modules.16.Conv1.0.weight" in state and "backbone_CNN.14.branch_pool.conv.weight" in state
    path = tmp_path / "abaw3.ckpt"
    torch.save({"epoch": 1, "state_dict": state}, path)
    model = create_encoder("smm-emotionnet", head_bias=True, pretrained=path)
    assert "ABAW3 MultiEmotionNet layout" in model.spec.init
    assert torch.equal(model.trunk.Mixed_6e.branch_pool.conv.weight, state["backbone_CNN.14.branch_pool.conv.weight"])
    assert torch.equal(model.au_weight, state["emotion_classifiers.0.fc.weight"])
    assert torch.equal(model.roi_embeddings[5].conv2[1].running_mean, state["AU_Metric_Modules.5.Conv2.1.running_mean"])
    assert torch.equal(model.message_maps[16].weight, state["transformation_matrices.16.weight"])
    # The paper's heads have no bias; left out, head_bias follows the checkpoint, asked for, it is refused.
    assert create_encoder("smm-emotionnet", pretrained=path).spec.options["head_bias"] is True
    with pytest.raises(AffbenchError, match="head_bias=True model, but head_bias=False was asked"):
        create_encoder("smm-emotionnet", head_bias=False, pretrained=path)


@pytest.mark.parametrize("name, option, value, message", [
    ("fan-au", "heatmap_scale", float("inf"), "Encoder 'fan-au': option heatmap_scale must be a finite number above 0; got inf."),
    ("fan-au", "heatmap_scale", float("nan"), "Encoder 'fan-au': option heatmap_scale must be a finite number above 0; got nan."),
    ("emotiram-f", "dropout", "half", "Encoder 'emotiram-f': option dropout must be a finite number in [0, 1); got 'half'."),
])
def test_numeric_encoder_options_must_be_finite_and_in_range(name, option, value, message):
    with pytest.raises(AffbenchError) as caught:
        get_encoder_spec(name, **{option: value})
    assert str(caught.value) == message
