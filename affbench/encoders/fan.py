"""Fan et al. (AAAI 2020) AU heatmap network and EmotiRAM-FAU, which fine-tunes it for emotions.

**fan-au** -- "Facial Action Unit Intensity Estimation via Semantic Correspondence Learning with
Dynamic Graph Convolution": a ResNet-50 trunk, then three 4x4 stride-2 transposed convolutions
(256, 128, 64 channels; batch norm, ReLU), each followed by a semantic-correspondence convolution
(SCC), then a 1x1 convolution to one heatmap per AU point (two points per AU). Heatmaps are a quarter
of the input side (64x64 at 256). An AU's intensity is the maximum of its heatmaps (mean of its two
points); training regresses Gaussian targets (sigma 2 heatmap pixels, peak = intensity) with MSE.

**SCC** (one per upsampling stage). Following the paper, the graph's nodes are the feature channels;
a node's feature is its flattened spatial map (H*W values). Each forward pass builds a k-nearest-
neighbour graph among the channels (Euclidean distance, k = 7, the node itself included as in the
reference's top-k), forms EdgeConv features [x_i, x_j - x_i] for every neighbour j, maps them with a
1x1 convolution from 2*H*W to H*W values (batch norm, ReLU) and takes the maximum over the
neighbours. The 1x1 convolution is evaluated exactly but cheaply as W_c x_i + W_d (x_j - x_i) =
(W_c - W_d) x_i + W_d x_j, computing each node's two products once instead of once per edge.
Because a node's feature is its spatial map, the SCC weights' shapes depend on the input size (at
256: 512->256, 2048->1024, 8192->4096 values, the widths of the reference's conv1/conv2/conv3).
The public TensorFlow code (EvelynFan/FAU) reshapes its NHWC tensors to (C, H*W) without a
transpose, so there a "node" is a block of consecutive memory: at 256, one position's 256 channels in
SCC1, eight neighbouring positions in SCC2, one image row in SCC3. The weights have the same shapes
either way; affbench builds the paper's channel graph by default (``graph_nodes="channels"``) and
the code's with ``graph_nodes="reference-code"`` (nodes and the result are read and written through
the same NHWC memory reinterpretation as the TensorFlow reshapes).

Heatmap targets: the paper writes I / (2 pi sigma^2) exp(...); the code renders
255 * I * exp(...) and reads a point's intensity as its maximum / 255. Here the target is
``heatmap_scale * I * exp(-d^2 / (2 sigma^2))`` and a point's intensity its maximum /
``heatmap_scale``: 1 by default, 255 as the code (which, with the same L2 weight, makes the data
term 255^2 times heavier relative to the regulariser).

Input: ImageNet normalisation by default (the torchvision trunk's); ``input_normalisation=
"reference-code"`` feeds what the TensorFlow code does: BGR channel order, 0-255 values minus the
per-channel means [123.68, 116.78, 103.94] (the RGB means, subtracted from B, G, R in that order), not
divided by a standard deviation.

**AU intensity from points.** The reference's DISFA point list has 24 entries: AU4 once, AU9 three
times, AU20's first point twice (``AU20_1``, ``AU20_1``), every other AU twice; its test script
writes each point's value (heatmap maximum / 255) and leaves the per-AU reading to an evaluation
that is not public. affbench places exactly two points per AU (:data:`AU_POINT_RULES`) and reads an
AU's intensity as the mean of its two points' values.

**emotiram-fau** -- Masur (2022): the same network with 10 heatmap points (the BP4D model: AU6,
AU10, AU12, AU14, AU17) on a 96x96 face, giving 10x24x24 = 5760 values, flattened into an FC
bottleneck 5760-2048-1024-512-256-7 (ReLU between layers; the thesis prints "2048->102", a typo for
1024). It outputs the expression logits and, for explainability, its heatmaps and AU intensities.

**AU points** -- affbench has the five aligned MTCNN landmarks per crop (eye centres, nose tip, mouth
corners), not the 49/68 landmarks the papers placed AU centres with. :func:`au_points` derives two
points per AU from those five by the rule in :data:`AU_POINT_RULES` (offsets in inter-ocular
distances along the eye line and its perpendicular), and :func:`heatmap_targets` renders them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from affbench.encoders.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderSpec,
    check_choice,
    check_positive,
    register_encoder,
)
from affbench.encoders.trunks import ResNet50Trunk
from affbench.encoders.weights import apply_pretrained, load_au_checkpoint
from affbench.errors import AffbenchError
from affbench.runtime.numbers import Range, check_number

#: DISFA's 12 AUs: the default of fan-au (24 heatmap points).
DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
#: The 5 AUs of Fan et al.'s BP4D intensity model: the default of emotiram-fau (10 heatmap points).
BP4D_INTENSITY_AUS = (6, 10, 12, 14, 17)

#: k of the dynamic kNN graph in every SCC module.
SCC_NEIGHBOURS = 7
#: Channels of the three transposed convolutions.
DECONV_CHANNELS = (256, 128, 64)
#: EmotiRAM-FAU's FC bottleneck after the flattened heatmaps.
BOTTLENECK_SIZES = (2048, 1024, 512, 256)
#: Gaussian width of the heatmap targets, in heatmap pixels.
HEATMAP_SIGMA = 2.0

#: Where an AU's two points sit, one per face side: ``AU: (anchor, toward_midline, down)``.
#: ``anchor`` is the side's eye centre ("eye") or mouth corner ("corner"), or the shared nose tip
#: ("nose") or mouth centre ("mouth"); the offsets are in inter-ocular distances d, "toward_midline"
#: along the eye line towards the face's vertical midline (negative = outwards) and "down" along
#: its perpendicular towards the mouth (negative = up). Brows sit about 0.45 d above the eye centres.
AU_POINT_RULES: dict[int, tuple[str, float, float]] = {
    1: ("eye", 0.20, -0.65),     # inner brow raiser: above the inner brow
    2: ("eye", -0.30, -0.60),    # outer brow raiser: above the outer brow
    4: ("eye", 0.10, -0.35),     # brow lowerer: between inner brow and eye
    5: ("eye", 0.00, -0.12),     # upper lid raiser: upper eyelid
    6: ("eye", -0.05, 0.45),     # cheek raiser: cheek below the eye
    7: ("eye", 0.00, 0.10),      # lid tightener: lower eyelid
    9: ("nose", -0.18, -0.35),   # nose wrinkler: sides of the nose bridge
    10: ("corner", 0.25, -0.20), # upper lip raiser: upper lip above the corner
    12: ("corner", 0.00, 0.00),  # lip corner puller: the corner
    14: ("corner", -0.12, 0.00), # dimpler: just outside the corner
    15: ("corner", 0.00, 0.20),  # lip corner depressor: below the corner
    17: ("mouth", -0.20, 0.55),  # chin raiser: chin
    20: ("corner", -0.20, 0.10), # lip stretcher: beyond the corner
    23: ("mouth", -0.18, 0.00),  # lip tightener: lips, between centre and corner
    24: ("mouth", -0.12, 0.05),  # lip pressor: lips near the centre
    25: ("mouth", -0.15, 0.00),  # lips part: lip line
    26: ("mouth", -0.15, 0.35),  # jaw drop: lower lip and jaw
}


# ----------------------------------------------------------------------------------------- AU points


def au_points(landmarks5, aus):
    """Two heatmap points per AU from the five aligned landmarks.

    Parameters
    ----------
    landmarks5 : array-like or Tensor of shape (..., 5, 2) or (..., 10)
        Left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner (MTCNN
        order, "left" = image left), as (x, y) in input-image pixels.
    aus : sequence of int
        FACS AU numbers, each a key of :data:`AU_POINT_RULES`.

    Returns
    -------
    same type as ``landmarks5``, shape (..., 2 * len(aus), 2)
        For AU ``aus[i]``: point ``2*i`` on the image-left side, ``2*i + 1`` on the image-right side.

    Examples
    --------
    >>> lm = np.array([[40., 50.], [80., 50.], [60., 70.], [45., 90.], [75., 90.]])
    >>> au_points(lm, [12]).tolist()  # AU12 sits on the mouth corners
    [[45.0, 90.0], [75.0, 90.0]]
    """
    unknown = [au for au in aus if au not in AU_POINT_RULES]
    if unknown:
        raise AffbenchError(
            f"No AU point rule for AU{unknown[0]}; rules exist for AUs {sorted(AU_POINT_RULES)}."
        )
    as_numpy = not isinstance(landmarks5, torch.Tensor)
    lm = torch.as_tensor(np.asarray(landmarks5) if as_numpy else landmarks5)
    lm = lm.to(torch.float64 if as_numpy else (lm.dtype if lm.is_floating_point() else torch.float32))
    if lm.shape[-1] == 10:
        lm = lm.reshape(*lm.shape[:-1], 5, 2)
    if lm.shape[-2:] != (5, 2):
        raise ValueError(f"landmarks5 must have shape (..., 5, 2) or (..., 10), got {tuple(lm.shape)}")
    eyes, nose, corners = lm[..., 0:2, :], lm[..., 2, :], lm[..., 3:5, :]
    eye_line = eyes[..., 1, :] - eyes[..., 0, :]
    d = eye_line.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    u = eye_line / d
    v = torch.stack([-u[..., 1], u[..., 0]], dim=-1)
    # Point v from the eyes towards the mouth whatever the image orientation.
    towards_mouth = corners.mean(dim=-2) - eyes.mean(dim=-2)
    v = v * torch.where((v * towards_mouth).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(v)
    inward = torch.stack([u, -u], dim=-2)  # left side looks right (+u) to the midline, right side -u
    anchors = {
        "eye": eyes,
        "corner": corners,
        "nose": nose.unsqueeze(-2).expand_as(eyes),
        "mouth": corners.mean(dim=-2, keepdim=True).expand_as(eyes),
    }
    points = []
    for au in aus:
        anchor, toward_midline, down = AU_POINT_RULES[au]
        side_points = anchors[anchor] + d.unsqueeze(-1) * (toward_midline * inward + down * v.unsqueeze(-2))
        points.append(side_points)
    out = torch.cat(points, dim=-2)
    return out.numpy() if as_numpy else out


def heatmap_targets(points, intensities, heatmap_size: int, input_size: int, sigma: float = HEATMAP_SIGMA):
    """Gaussian heatmap targets, one per point, peaking at the point with height = intensity.

    As in Fan et al.'s code, a point at input pixel ``p`` is centred on heatmap pixel
    ``floor(p * heatmap_size / input_size + 0.5)``, so the target's maximum equals the intensity
    whenever that pixel lies inside the map.

    Parameters
    ----------
    points : array-like or Tensor of shape (B, P, 2)
        (x, y) in input-image pixels, e.g. from :func:`au_points`.
    intensities : array-like or Tensor of shape (B, P) or (B, P // 2)
        Per point, or per AU (then repeated for the AU's two points). Must be >= 0: mask AUs that
        are not annotated before calling.
    heatmap_size, input_size : int
        Sides of the heatmap and of the input image.
    sigma : float, default 2
        Gaussian standard deviation in heatmap pixels.

    Returns
    -------
    Tensor of shape (B, P, heatmap_size, heatmap_size), float32

    Examples
    --------
    >>> t = heatmap_targets([[[32.0, 16.0]]], [[3.0]], heatmap_size=16, input_size=64)
    >>> float(t.max()), divmod(int(t.argmax()), 16)
    (3.0, (4, 8))
    """
    pts = torch.as_tensor(points, dtype=torch.float32)
    device = pts.device
    weights = torch.as_tensor(intensities, dtype=torch.float32, device=device)
    if pts.ndim != 3 or pts.shape[-1] != 2:
        raise ValueError(f"points must have shape (B, P, 2), got {tuple(pts.shape)}")
    if weights.shape == (pts.shape[0], pts.shape[1] // 2) and pts.shape[1] % 2 == 0:
        weights = weights.repeat_interleave(2, dim=1)
    if weights.shape != pts.shape[:2]:
        raise ValueError(f"intensities must have shape (B, P) or (B, P/2), got {tuple(weights.shape)}")
    if (weights < 0).any():
        raise ValueError("intensities must be >= 0; mask AUs that are not annotated before building targets")
    centres = torch.floor(pts * (heatmap_size / input_size) + 0.5)
    grid = torch.arange(heatmap_size, dtype=torch.float32, device=device)
    dx = (grid.view(1, 1, 1, -1) - centres[..., 0, None, None]) ** 2
    dy = (grid.view(1, 1, -1, 1) - centres[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2 * sigma**2)) * weights[..., None, None]


# ----------------------------------------------------------------------------------------- network


#: How SCC reads its graph nodes from a feature map: the paper's channels, or the TensorFlow
#: code's reshape of NHWC memory to (C, H*W) without a transpose.
GRAPH_NODES = ("channels", "reference-code")
#: Input normalisation: torchvision's ImageNet mean/std, or the TensorFlow code's BGR minus means.
INPUT_NORMALISATIONS = ("imagenet", "reference-code")
#: The reference code's means (0-255), subtracted from its BGR image channel by channel.
REFERENCE_PIXEL_MEANS = (123.68, 116.78, 103.94)


class SemanticCorrespondence(nn.Module):
    """SCC: EdgeConv over a dynamic kNN graph whose nodes are the feature channels (or, with
    ``nodes="reference-code"``, blocks of H*W values of the NHWC memory)."""

    def __init__(self, spatial: int, k: int = SCC_NEIGHBOURS, nodes: str = "channels"):
        super().__init__()
        self.k = k
        self.nodes = nodes
        node_dim = spatial * spatial
        # One 1x1 convolution over [x_i, x_j - x_i], kept as a Conv2d so its weight has the
        # reference's layout; forward applies it in the factored form.
        self.edge_conv = nn.Conv2d(2 * node_dim, node_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(node_dim)
        nn.init.kaiming_normal_(self.edge_conv.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.nodes == "channels":
            nodes = x.flatten(2)  # (B, C, HW): one node per channel
        else:  # TensorFlow's reshape of NHWC memory to (C, HW): node i = values i*HW .. (i+1)*HW - 1
            nodes = x.permute(0, 2, 3, 1).reshape(b, c, h * w)
        k = min(self.k, c)
        # Distances in float32 even under mixed precision: squared norms of H*W values overflow fp16.
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            flat = nodes.float()
            squared = (flat * flat).sum(-1)
            distance = squared.unsqueeze(2) - 2 * flat @ flat.transpose(1, 2) + squared.unsqueeze(1)
            neighbours = distance.topk(k, dim=-1, largest=False).indices  # (B, C, k), self included
        weight = self.edge_conv.weight.flatten(1)  # (HW_out, 2*HW_in)
        w_centre, w_offset = weight.chunk(2, dim=1)
        own = nodes @ (w_centre - w_offset).t()  # (B, C, HW)
        other = nodes @ w_offset.t()  # (B, C, HW)
        batch = torch.arange(b, device=x.device).view(b, 1, 1)
        edges = own.unsqueeze(2) + other[batch, neighbours]  # (B, C, k, HW)
        edges = torch.relu(self.bn(edges.permute(0, 3, 1, 2)))  # (B, HW, C, k)
        result = edges.amax(dim=-1).view(b, h * w, c).transpose(1, 2)  # (B, C nodes, HW)
        if self.nodes == "channels":
            return result.reshape(b, c, h, w)
        return result.reshape(b, h, w, c).permute(0, 3, 1, 2)  # the same memory read back as NHWC


#: The reference code's heatmap target scale (peak = 255 x intensity).
REFERENCE_HEATMAP_SCALE = 255.0


class FanHeatmapNet(nn.Module):
    """ResNet-50 -> 3 x (transposed conv, BN, ReLU, SCC) -> 1x1 conv to ``n_points`` heatmaps.

    The 1x1 output convolution starts at MSRA (He) scale times ``heatmap_scale / 255``. The
    reference initialises it with MSRA scaling for targets that peak at 255 x intensity, so its
    first outputs (about 1.6 RMS) are about 2% of the targets' RMS. Kept at MSRA with targets x1, they
    would be about 6 times the targets (RMS 0.27 on DISFA-like labels at 16x16). Adam changes a
    weight by about the learning rate per step, so the network then spends its first hundreds of
    steps shrinking that noise. In the learnability test (8 crops, 64 px, Adam lr 3e-4) that left
    the ICC at 0.05 after 60 steps; with the scaled start it was 0.43 (0.53 at lr 1e-3). At
    ``heatmap_scale = 255`` this is exactly the reference's initialisation.
    """

    def __init__(self, n_points: int, input_size: int, graph_nodes: str = "channels", bgr: bool = False,
                 heatmap_scale: float = 1.0):
        super().__init__()
        self.bgr = bgr
        self.trunk = ResNet50Trunk()
        spatial = input_size // ResNet50Trunk.stride
        in_channels = ResNet50Trunk.out_channels
        for stage, out_channels in enumerate(DECONV_CHANNELS, start=1):
            spatial *= 2
            deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=False)
            nn.init.normal_(deconv.weight, std=0.01)
            setattr(self, f"deconv{stage}", nn.Sequential(deconv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
            setattr(self, f"scc{stage}", SemanticCorrespondence(spatial, nodes=graph_nodes))
            in_channels = out_channels
        self.heatmap_head = nn.Conv2d(in_channels, n_points, kernel_size=1)
        nn.init.kaiming_normal_(self.heatmap_head.weight, mode="fan_in", nonlinearity="relu")
        with torch.no_grad():  # the reference's initial output scale relative to its targets (see above)
            self.heatmap_head.weight.mul_(heatmap_scale / REFERENCE_HEATMAP_SCALE)
        assert self.heatmap_head.bias is not None  # built with bias=True
        nn.init.zeros_(self.heatmap_head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.trunk(images.flip(1) if self.bgr else images)
        for stage in (1, 2, 3):
            x = getattr(self, f"scc{stage}")(getattr(self, f"deconv{stage}")(x))
        return self.heatmap_head(x)


def au_intensities(heatmaps: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Per-AU intensity: each point's heatmap maximum / ``scale``, averaged over the AU's two points."""
    peaks = heatmaps.amax(dim=(-2, -1)) / scale
    return peaks.view(peaks.shape[0], -1, 2).mean(dim=-1)


class _HeatmapEncoder(Encoder):
    """What fan-au and emotiram-fau share: the heatmap network and the target helpers."""

    def _build_heatmap_net(self, *, regressed: bool):
        """``regressed``: the heatmaps are trained against targets (fan-au), so the output layer
        starts at the targets' scale; EmotiRAM-FAU's feed its bottleneck and start at MSRA scale."""
        options = self.spec.options
        self.heatmap_net = FanHeatmapNet(
            self.spec.heads["heatmaps"], self.spec.input_size, graph_nodes=options.get("graph_nodes", "channels"),
            bgr=options.get("input_normalisation", "imagenet") == "reference-code",
            heatmap_scale=float(options.get("heatmap_scale", 1.0)) if regressed else REFERENCE_HEATMAP_SCALE,
        )

    def intensities(self, heatmaps: torch.Tensor) -> torch.Tensor:
        return au_intensities(heatmaps, float(self.spec.options.get("heatmap_scale", 1.0)))

    def au_points(self, landmarks5, *, image_size: int | None = None):
        """This model's AU points (input pixels) from 5 landmarks given in pixels of ``image_size``."""
        if not isinstance(landmarks5, torch.Tensor):
            landmarks5 = np.asarray(landmarks5, dtype=np.float64)
        scale = 1.0 if image_size is None else self.spec.input_size / image_size
        return au_points(landmarks5 * scale, self.spec.aus)

    def heatmap_targets(self, landmarks5, intensities, *, image_size: int | None = None) -> torch.Tensor:
        """Targets for this model's ``heatmaps`` output.

        Parameters
        ----------
        landmarks5 : Tensor or array of shape (B, 5, 2) or (B, 10)
            The five aligned landmarks, in pixels of a crop of side ``image_size`` (default: the
            model's input size; pass the stored crop side when the harness resizes crops).
        intensities : Tensor or array of shape (B, n_aus)
            AU intensities (0-5) in ``spec.aus`` order, or per point (B, 2 * n_aus).

        Returns
        -------
        Tensor of shape (B, n_points, heatmap_size, heatmap_size)
        """
        points = self.au_points(torch.as_tensor(landmarks5, dtype=torch.float32), image_size=image_size)
        scale = float(self.spec.options.get("heatmap_scale", 1.0))
        heatmap_size = self.spec.heatmap_size
        assert heatmap_size is not None  # every heatmap variant's spec sets it
        return heatmap_targets(points, torch.as_tensor(intensities, dtype=torch.float32) * scale,
                               heatmap_size, self.spec.input_size)


def _check_fan_options(name: str, options: dict) -> tuple[int, ...]:
    aus = options["aus"]
    if isinstance(aus, (str, bytes)) or not hasattr(aus, "__iter__"):
        raise AffbenchError(f"Encoder {name!r}: option aus must be a sequence of AU numbers, got {aus!r}.")
    aus = tuple(int(check_number(f"Encoder {name!r}: option aus", a, Range(1, integer=True))) for a in aus)
    if not aus or len(set(aus)) != len(aus):
        raise AffbenchError(f"Encoder {name!r}: option aus must list distinct AU numbers, got {aus!r}.")
    unknown = [a for a in aus if a not in AU_POINT_RULES]
    if unknown:
        raise AffbenchError(
            f"Encoder {name!r}: no AU point rule for AU{unknown[0]}; rules exist for AUs {sorted(AU_POINT_RULES)}."
        )
    size = options["input_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 64 or size % 32:
        raise AffbenchError(f"Encoder {name!r}: option input_size must be a multiple of 32, at least 64, got {size!r}.")
    check_choice(name, "graph_nodes", options["graph_nodes"], GRAPH_NODES)
    check_choice(name, "input_normalisation", options["input_normalisation"], INPUT_NORMALISATIONS)
    check_number(f"Encoder {name!r}: option heatmap_scale", options["heatmap_scale"], Range(0, open_low=True))
    return aus


def _normalisation(options: dict) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) for :func:`affbench.data.normalise`, which works on RGB in [0, 1]: the reference
    code's values come out once the network flips the channels to BGR."""
    if options["input_normalisation"] == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    # Channel c of the RGB input meets reference mean (B, G, R order) of position 2 - c after the flip.
    m0, m1, m2 = REFERENCE_PIXEL_MEANS
    return (m2 / 255.0, m1 / 255.0, m0 / 255.0), (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)


def _fan_au_spec(name: str, options: dict) -> EncoderSpec:
    aus = _check_fan_options(name, options)
    options = {**options, "aus": aus}
    mean, std = _normalisation(options)
    return EncoderSpec(
        name=name, family="fan", input_size=options["input_size"], mean=mean, std=std,
        heads={"au": len(aus), "heatmaps": 2 * len(aus)}, au_output="intensities", options=options,
        aus=aus, heatmap_size=options["input_size"] // 4,
    )


def _emotiram_fau_spec(name: str, options: dict) -> EncoderSpec:
    aus = _check_fan_options(name, options)
    check_positive(name, "n_classes", options["n_classes"])
    options = {**options, "aus": aus}
    mean, std = _normalisation(options)
    return EncoderSpec(
        name=name, family="fan", input_size=options["input_size"], mean=mean, std=std,
        heads={"expression": options["n_classes"], "au": len(aus), "heatmaps": 2 * len(aus)},
        au_output="intensities", options=options, aus=aus, heatmap_size=options["input_size"] // 4,
    )


class FanAU(_HeatmapEncoder):
    """fan-au: ``heatmaps`` (B, 2*n_aus, S/4, S/4) and ``au`` intensities (B, n_aus)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self._build_heatmap_net(regressed=True)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        heatmaps = self.heatmap_net(images)
        return {"au": self.intensities(heatmaps), "heatmaps": heatmaps}

    def load_imagenet(self) -> str:
        return self.heatmap_net.trunk.load_imagenet()


class EmotiRAMFAU(_HeatmapEncoder):
    """emotiram-fau: heatmaps -> flatten -> FC bottleneck -> ``expression`` logits."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self._build_heatmap_net(regressed=False)
        assert spec.heatmap_size is not None  # every heatmap variant's spec sets it
        layers: list[nn.Module] = [nn.Flatten()]
        width = spec.heads["heatmaps"] * spec.heatmap_size**2
        for size in BOTTLENECK_SIZES:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        layers.append(nn.Linear(width, spec.heads["expression"]))
        self.bottleneck = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        heatmaps = self.heatmap_net(images)
        return {"expression": self.bottleneck(heatmaps), "au": self.intensities(heatmaps), "heatmaps": heatmaps}

    def load_imagenet(self) -> str:
        return self.heatmap_net.trunk.load_imagenet()


def _load_imagenet(model) -> str:
    return model.load_imagenet()


@register_encoder(spec=_fan_au_spec)
def fan_au(
    *, aus=DISFA_AUS, input_size: int = 256, graph_nodes: str = "channels", input_normalisation: str = "imagenet",
    heatmap_scale: float = 1.0, pretrained=None, partial_load: bool = False,
) -> FanAU:
    """Fan et al. AU heatmap net: ResNet-50, 3 deconv+SCC (kNN k=7), 2 heatmaps per AU; 256x256; DISFA 12 AUs.

    ``graph_nodes``, ``input_normalisation`` and ``heatmap_scale`` choose between the paper's reading
    (the defaults) and the public TensorFlow code's (``"reference-code"``, ``"reference-code"``, 255).
    """
    spec = _fan_au_spec("fan-au", dict(aus=aus, input_size=input_size, graph_nodes=graph_nodes,
                                       input_normalisation=input_normalisation, heatmap_scale=heatmap_scale))
    return apply_pretrained(FanAU(spec), pretrained, _load_imagenet, partial=partial_load)


@register_encoder(spec=_emotiram_fau_spec)
def emotiram_fau(
    *, n_classes: int = 7, aus=BP4D_INTENSITY_AUS, input_size: int = 96, graph_nodes: str = "channels",
    input_normalisation: str = "imagenet", heatmap_scale: float = 1.0, pretrained=None, au_checkpoint=None,
    partial_load: bool = False,
) -> EmotiRAMFAU:
    """EmotiRAM-FAU: Fan et al.'s net (10 points) on 96x96 -> 10x24x24 -> FC 5760-2048-1024-512-256-7.

    ``au_checkpoint`` starts from a fan-au checkpoint trained by affbench (the thesis fine-tunes an
    AU-pretrained encoder). Everything of the same name and shape is loaded. Only the heatmap head
    may differ in shape, when ``aus`` differ (``aus`` chooses the heatmap points, so a new head is
    what was asked for; pass ``aus=fan.DISFA_AUS`` to keep all 24 points of a DISFA fan-au): it then
    keeps its fresh initialisation, which is written into ``spec.init`` and ``spec.fresh`` and
    warned about. Anything else that does not match is refused unless ``partial_load=True``, in
    particular SCC layers of a checkpoint trained at another input size (their width is the
    heatmap area; train fan-au at this model's ``input_size``, 96 by default, to carry them over).
    """
    spec = _emotiram_fau_spec("emotiram-fau", dict(n_classes=n_classes, aus=aus, input_size=input_size,
                                                   graph_nodes=graph_nodes, input_normalisation=input_normalisation,
                                                   heatmap_scale=heatmap_scale))
    model = EmotiRAMFAU(spec)
    if au_checkpoint is not None:
        if pretrained is not None:
            raise AffbenchError("Encoder 'emotiram-fau': give either pretrained or au_checkpoint, not both.")
        load_au_checkpoint(
            model, au_checkpoint, source="fan-au", prefix="",
            missing_ok=("bottleneck.",), mismatch_ok=("heatmap_net.heatmap_head.",), partial=partial_load,
            hints={"heatmap_net.scc": f"the SCC widths follow the input size, so the AU model must be trained "
                                      f"at input_size={input_size} to carry them over"},
        )
        return model
    return apply_pretrained(model, pretrained, _load_imagenet, partial=partial_load)
