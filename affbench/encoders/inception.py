"""SMM-EmotionNet (Deng, ABAW3 2022) and its InceptionV3 multitask baseline.

Both use torchvision's InceptionV3 cut after Mixed_6e: 768 x 17 x 17 feature maps from a 299 input.

**smm-emotionnet** -- the Sign-and-Message Multi-Emotion Net, built on Jacob & Stenger's (CVPR 2021)
AU transformer:

- *ROI attention*: a 3x3 conv 768 -> 4U, BN, ReLU, a 1x1 conv 4U -> U, BN, ReLU, then a 1x1 conv
  U -> U and a sigmoid give U = 17 attention maps;
- *ROI embedding* (one per ROI): the feature map re-weighted by its attention map (x * a + x), a 3x3
  conv 768 -> D, BN, ReLU, a 1x1 conv D -> D, BN, ReLU, global average pooling and an FC D -> D:
  one D = 16 vector f_u per ROI;
- *sign vehicle space*: sinusoidal positions are added (with dropout 0.3) and one transformer
  encoder layer (d_model 16, 8 heads, feed-forward 1024, GELU, post-norm) relates the ROIs; AU h's
  logit is the dot product of its output token S_h with a per-AU weight vector W_h (no bias), for the
  first H = 12 tokens. As in the public code, all U tokens pass through the transformer and the AU
  head reads the first H outputs;
- *message space*: a per-ROI linear map A_u (no bias) takes each ROI embedding f_u (before the
  transformer) into the message space; the U results are averaged and two linear layers without
  bias give the expression logits (8) and valence/arousal (2).

**inceptionv3-mtl** -- the paper's multitask baseline as the public code builds it: the trunk,
global max pooling over the 17x17 map, then per task: EXPR and VA one branch FC 768 -> 16, ReLU,
FC 16 -> C; AU (``au_branch="per-au"``, default) one FC 768 -> 16 + ReLU per AU, and AU i's logit
is the dot product of its 16 values with a per-AU weight vector plus a bias.
``au_branch="shared"`` builds one shared 768 -> 16 -> 12 branch instead.

Checkpoints of the public code (wtomin/ABAW3_MultiEmotionNet: Lightning files, a ``state_dict``,
optionally with a ``model.`` prefix) load into both variants key for key. The public heads have
biases where the paper's SMM-EmotionNet has none: ``head_bias`` (default: the checkpoint's, else
False, the paper) builds them. Structure options left out follow a checkpoint given as
``pretrained`` (``head_bias``, ``au_branch``, the AU and class counts). The auxiliary
attention-classification layer of the public SMM model feeds no output and is not built; its tensors
(and the positional-encoding buffer, recomputed here) are not used.
"""

from __future__ import annotations

import math
import re
from typing import Any

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
from affbench.encoders.trunks import (
    INCEPTION_MIXED_6E_CHANNELS,
    INCEPTION_TO_MIXED_6E,
    inception_v3_to_mixed_6e,
    load_inception_imagenet,
)
from affbench.encoders.weights import apply_pretrained, is_checkpoint_path, read_state_dict
from affbench.errors import AffbenchError

#: Dropout on the ROI embeddings plus positions (the public code's default).
POSITION_DROPOUT = 0.3


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The transformer's sine/cosine position table, shape (length, dim): sin on even, cos on odd."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float32) * math.log(10000.0) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


def _abaw3_trunk_key(key: str) -> str:
    """``backbone_CNN.<i>.rest`` (the public code's Sequential) -> ``trunk.<torchvision name>.rest``."""
    index, rest = key[len("backbone_CNN."):].split(".", 1)
    return f"trunk.{INCEPTION_TO_MIXED_6E[int(index)]}.{rest}"


class _InceptionEncoder(Encoder):
    trunk: nn.Sequential

    def load_imagenet(self) -> str:
        return load_inception_imagenet(self.trunk)


class ROIEmbedding(nn.Module):
    """One ROI: attention-weighted features -> conv 3x3, conv 1x1, GAP, FC -> D values."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.fc = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(features * attention + features))
        return self.fc(x.mean(dim=(-2, -1)))


def _multitask_spec(name: str, options: dict) -> EncoderSpec:
    """The spec both InceptionV3 multitask variants share: au logits, expression logits and va."""
    if options["input_size"] < 75:
        raise AffbenchError(f"Encoder {name!r}: InceptionV3 needs input_size >= 75, got {options['input_size']}.")
    return EncoderSpec(
        name=name, family="inception", input_size=options["input_size"], mean=IMAGENET_MEAN, std=IMAGENET_STD,
        heads={"au": options["n_aus"], "expression": options["n_classes"], "va": 2}, au_output="logits",
        options=dict(options),
    )


def _smm_spec(name: str, options: dict) -> EncoderSpec:
    for option in ("n_aus", "n_rois", "n_classes", "embed_dim", "n_heads", "ff_dim", "input_size"):
        check_positive(name, option, options[option])
    if options["n_rois"] < options["n_aus"]:
        raise AffbenchError(f"Encoder {name!r}: n_rois ({options['n_rois']}) must be at least n_aus ({options['n_aus']}).")
    if options["embed_dim"] % options["n_heads"]:
        raise AffbenchError(f"Encoder {name!r}: embed_dim ({options['embed_dim']}) must be divisible by n_heads ({options['n_heads']}).")
    return _multitask_spec(name, options)


class SMMEmotionNet(_InceptionEncoder):
    """Sign-and-Message Multi-Emotion Net: ``au`` logits, ``expression`` logits, ``va``."""

    positions: torch.Tensor  # a buffer: the sinusoidal position table of the ROIs

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        o = spec.options
        rois, dim, channels = o["n_rois"], o["embed_dim"], INCEPTION_MIXED_6E_CHANNELS
        self.trunk = inception_v3_to_mixed_6e()
        self.roi_attention = nn.Sequential(
            nn.Conv2d(channels, 4 * rois, 3, padding=1), nn.BatchNorm2d(4 * rois), nn.ReLU(inplace=True),
            nn.Conv2d(4 * rois, rois, 1), nn.BatchNorm2d(rois), nn.ReLU(inplace=True),
        )
        self.attention_maps = nn.Sequential(nn.Conv2d(rois, rois, 1), nn.Sigmoid())
        self.roi_embeddings = nn.ModuleList(ROIEmbedding(channels, dim) for _ in range(rois))
        self.register_buffer("positions", sinusoidal_positions(rois, dim), persistent=False)
        self.position_dropout = nn.Dropout(POSITION_DROPOUT)
        self.transformer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=o["n_heads"], dim_feedforward=o["ff_dim"], activation="gelu", batch_first=True,
        )
        self.au_weight = nn.Parameter(torch.empty(o["n_aus"], dim))
        nn.init.kaiming_uniform_(self.au_weight, a=math.sqrt(5))  # nn.Linear's default
        if o["head_bias"]:
            self.au_bias = nn.Parameter(torch.zeros(o["n_aus"]))
        self.message_maps = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(rois))
        self.expression_head = nn.Linear(dim, o["n_classes"], bias=o["head_bias"])
        self.va_head = nn.Linear(dim, 2, bias=o["head_bias"])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(images)
        attention = self.attention_maps(self.roi_attention(features))
        rois = torch.stack(
            [embed(features, attention[:, u : u + 1]) for u, embed in enumerate(self.roi_embeddings)], dim=1
        )  # (B, U, D)
        signs = self.transformer(self.position_dropout(rois + self.positions))
        n_aus = self.au_weight.shape[0]
        au = (signs[:, :n_aus] * self.au_weight).sum(dim=-1)
        if hasattr(self, "au_bias"):
            au = au + self.au_bias
        messages = torch.stack([m(rois[:, u]) for u, m in enumerate(self.message_maps)], dim=1).mean(dim=1)
        return {"au": au, "expression": self.expression_head(messages), "va": self.va_head(messages)}

    # -------------------------------------------------------------- key-mapping hook

    def map_checkpoint_keys(self, state, config=None):
        if not any(k.startswith("backbone_CNN.") for k in state):
            return state, "affbench"
        renamed = {}
        for key, value in state.items():
            new = key
            if key.startswith("backbone_CNN."):
                new = _abaw3_trunk_key(key)
            elif key.startswith("AU_attention_convs."):
                new = "roi_attention." + key[len("AU_attention_convs."):]
            elif key.startswith("AU_attention_map_module."):
                new = "attention_maps." + key[len("AU_attention_map_module."):]
            elif match := re.match(r"AU_Metric_Modules\.(\d+)\.(Conv1|Conv2|fc)\.(.*)", key):
                part = {"Conv1": "conv1", "Conv2": "conv2", "fc": "fc"}[match[2]]
                new = f"roi_embeddings.{match[1]}.{part}.{match[3]}"
            elif key.startswith("MHA."):
                new = "transformer." + key[len("MHA."):]
            elif match := re.match(r"transformation_matrices\.(\d+)\.weight", key):
                new = f"message_maps.{match[1]}.weight"
            elif key == "emotion_classifiers.0.fc.weight":  # tasks in the order AU, EXPR, VA
                new = "au_weight"
            elif key == "emotion_classifiers.0.fc.bias":
                new = "au_bias"
            elif match := re.match(r"emotion_classifiers\.([12])\.(weight|bias)", key):
                new = ("expression_head." if match[1] == "1" else "va_head.") + match[2]
            renamed[new] = value
        return renamed, "ABAW3 MultiEmotionNet"

    def expected_checkpoint_gaps(self, layout):
        if layout == "ABAW3 MultiEmotionNet":
            # The attention classifier feeds no output; the position table is recomputed, not learned.
            return (), ("AU_attention_classification_module.", "positional_encoding.")
        return (), ()


def _mtl_spec(name: str, options: dict) -> EncoderSpec:
    for option in ("n_aus", "n_classes", "branch_dim", "input_size"):
        check_positive(name, option, options[option])
    check_choice(name, "au_branch", options["au_branch"], AU_BRANCHES)
    return _multitask_spec(name, options)


#: inceptionv3-mtl's AU branch: per-AU embeddings and dot products (public code), or one shared branch.
AU_BRANCHES = ("per-au", "shared")


def _pretrained_state(options: dict) -> dict | None:
    path = options.get("pretrained")
    return read_state_dict(path) if path is not None and is_checkpoint_path(path) else None


def _infer_smm(options: dict) -> dict:
    state = _pretrained_state(options)
    if state is None:
        return {}
    implied: dict[str, Any] = {}
    for weight, bias in (("emotion_classifiers.0.fc.weight", "emotion_classifiers.0.fc.bias"), ("au_weight", "au_bias")):
        if weight in state:
            implied["n_aus"] = int(state[weight].shape[0])
            implied["head_bias"] = bias in state
    for key in ("emotion_classifiers.1.weight", "expression_head.weight"):
        if key in state:
            implied["n_classes"] = int(state[key].shape[0])
    return implied


def _infer_mtl(options: dict) -> dict:
    state = _pretrained_state(options)
    if state is None:
        return {}
    implied: dict[str, Any] = {}
    if "emotion_metric_modules.0.0.0.weight" in state or "au_embeddings.0.weight" in state:
        implied["au_branch"] = "per-au"
        classifier = state.get("emotion_classifiers.0.fc.weight", state.get("au_classifier.weight"))
        if classifier is not None:
            implied["n_aus"] = int(classifier.shape[0])
    elif "au_branch.2.weight" in state:
        implied["au_branch"] = "shared"
        implied["n_aus"] = int(state["au_branch.2.weight"].shape[0])
    for key in ("emotion_classifiers.1.weight", "expression_branch.2.weight"):
        if key in state:
            implied["n_classes"] = int(state[key].shape[0])
    return implied


class InceptionV3Multitask(_InceptionEncoder):
    """InceptionV3 to Mixed_6e, global max pooling, a 768-16-C branch per task (per-AU for AU)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        width = spec.options["branch_dim"]
        self.trunk = inception_v3_to_mixed_6e()
        for task, size in spec.heads.items():
            if task == "au" and spec.options["au_branch"] == "per-au":
                self.au_embeddings = nn.ModuleList(nn.Linear(INCEPTION_MIXED_6E_CHANNELS, width) for _ in range(size))
                self.au_classifier = nn.Linear(width, size)  # row i is AU i's weight vector
                continue
            branch = nn.Sequential(nn.Linear(INCEPTION_MIXED_6E_CHANNELS, width), nn.ReLU(inplace=True), nn.Linear(width, size))
            setattr(self, f"{task}_branch", branch)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.trunk(images).amax(dim=(-2, -1))
        out = {}
        for task in self.spec.heads:
            if task == "au" and hasattr(self, "au_embeddings"):
                embeddings = torch.stack([torch.relu(layer(pooled)) for layer in self.au_embeddings], dim=1)
                out[task] = (embeddings * self.au_classifier.weight).sum(dim=-1) + self.au_classifier.bias
            else:
                out[task] = getattr(self, f"{task}_branch")(pooled)
        return out

    def map_checkpoint_keys(self, state, config=None):
        if not any(k.startswith("backbone_CNN.") for k in state):
            return state, "affbench"
        renamed = {}
        for key, value in state.items():
            new = key
            if key.startswith("backbone_CNN."):
                new = _abaw3_trunk_key(key)
            elif match := re.match(r"emotion_metric_modules\.0\.(\d+)\.0\.(weight|bias)", key):
                new = f"au_embeddings.{match[1]}.{match[2]}"
            elif match := re.match(r"emotion_classifiers\.0\.fc\.(weight|bias)", key):
                new = f"au_classifier.{match[1]}"
            elif match := re.match(r"emotion_metric_modules\.([12])\.0\.(weight|bias)", key):
                new = ("expression" if match[1] == "1" else "va") + f"_branch.0.{match[2]}"
            elif match := re.match(r"emotion_classifiers\.([12])\.(weight|bias)", key):
                new = ("expression" if match[1] == "1" else "va") + f"_branch.2.{match[2]}"
            renamed[new] = value
        return renamed, "ABAW3 Baseline_Model"


@register_encoder(spec=_smm_spec, infer=_infer_smm)
def smm_emotionnet(
    *, n_aus: int = 12, n_rois: int = 17, n_classes: int = 8, embed_dim: int = 16, n_heads: int = 8,
    ff_dim: int = 1024, head_bias: bool = False, input_size: int = 299, pretrained=None, partial_load: bool = False,
) -> SMMEmotionNet:
    """SMM-EmotionNet: InceptionV3 (Mixed_6e), 17 ROI attention+embeddings (D=16), 1 transformer layer, AU dot products, message space -> EXPR 8, VA 2."""
    options = dict(
        n_aus=n_aus, n_rois=n_rois, n_classes=n_classes, embed_dim=embed_dim, n_heads=n_heads, ff_dim=ff_dim,
        head_bias=head_bias, input_size=input_size,
    )
    model = SMMEmotionNet(_smm_spec("smm-emotionnet", options))
    return apply_pretrained(model, pretrained, lambda m: m.load_imagenet(), partial=partial_load)


@register_encoder(spec=_mtl_spec, infer=_infer_mtl)
def inceptionv3_mtl(
    *, n_aus: int = 12, n_classes: int = 8, branch_dim: int = 16, au_branch: str = "per-au", input_size: int = 299,
    pretrained=None, partial_load: bool = False,
) -> InceptionV3Multitask:
    """InceptionV3 multitask baseline: Mixed_6e trunk, max pool, per-task branch 768x16 -> 16xC (AU: per-AU 768x16 + dot product; EXPR 8, VA 2)."""
    options = dict(n_aus=n_aus, n_classes=n_classes, branch_dim=branch_dim, au_branch=au_branch, input_size=input_size)
    model = InceptionV3Multitask(_mtl_spec("inceptionv3-mtl", options))
    return apply_pretrained(model, pretrained, lambda m: m.load_imagenet(), partial=partial_load)
