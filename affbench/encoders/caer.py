"""EmotiRAM-f: the face stream of EmotiRAM (Costa et al. 2021), built on CAER-Net-S (Lee et al. 2019).

EmotiRAM's code is not public; its face stream is CAER-Net-S's face encoding stream: five 3x3
convolutions (with bias) with 32, 64, 128, 256 and 256 channels, each followed by batch norm, ReLU
and 2x2 max-pooling, then global average pooling. The classifier is the CAER-Net fusion head for one
stream (``fusion="conv"``, default): a 1x1 convolution 256 -> 128, ReLU, dropout and a 1x1
convolution 128 -> n_classes. Input: 96x96 faces.

The public CAER-S code (ndkhanh360/CAER) has two face-only models, and both load:

- ``model/orig_model.py`` CAERSNet with the context stream and fusion attention off: the structure
  above, key for key (``fusion="conv"``);
- ``model/model.py`` CAERSNet as its ``configs/face_config.json`` trains it (``use_context`` false,
  ``concat`` true): the face stream max-pools after the first four convolutions only, and the
  fusion head is batch norm over the 256 pooled features, FC 512 -> 128 of which only the face half
  (the first 256 inputs) meets non-zero values, ReLU, dropout, FC 128 -> 7 (``fusion="linear"``).
  Its context stream, attention and fusion-weight layers are built there but feed nothing in that
  configuration; they are not used. The repository trainer's checkpoint pickles its configuration
  object: it is read without running any code (see :mod:`affbench.encoders.weights`), and a
  configuration that uses the context stream is refused. A plain state dict of this model carries no
  configuration; loading it assumes the face configuration and says so in ``spec.init``.

With ``pretrained=PATH`` the options left out (``fusion``, ``n_classes``) follow the checkpoint.
"""

from __future__ import annotations

import re

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
from affbench.encoders.weights import apply_pretrained, is_checkpoint_path, read_state_dict
from affbench.errors import AffbenchError
from affbench.runtime.numbers import Range, check_number

#: Channels of the five convolution blocks of the CAER-Net-S face stream.
FACE_STREAM_CHANNELS = (32, 64, 128, 256, 256)
#: The classifier heads: CAER-Net's 1x1 convolutions, or the CAER repository's BN + linear layers.
FUSION_HEADS = ("conv", "linear")

_REPO_STREAM = "two_stream_net.face_encoding_module."
_ORIG_LAYOUT = "CAER repository orig_model.py (face stream, no fusion attention)"
_FACE_CONFIG_LAYOUT = "CAER repository model.py, face configuration"
_CONFIG_NOT_SAVED = " (no configuration saved: use_context=false, concat=true assumed)"


def _spec(name: str, options: dict) -> EncoderSpec:
    check_positive(name, "n_classes", options["n_classes"])
    check_positive(name, "input_size", options["input_size"])
    check_choice(name, "fusion", options["fusion"], FUSION_HEADS)
    check_number(f"Encoder {name!r}: option dropout", options["dropout"], Range(0, 1, open_high=True))
    return EncoderSpec(
        name=name, family="caer", input_size=options["input_size"], mean=IMAGENET_MEAN, std=IMAGENET_STD,
        heads={"expression": options["n_classes"]}, au_output=None, options=dict(options),
    )


def _infer(options: dict) -> dict:
    path = options.get("pretrained")
    if path is None or not is_checkpoint_path(path):
        return {}
    state = read_state_dict(path)
    for fusion, last in (("linear", "fusion_net.fc2.weight"), ("conv", "fusion_net.conv2.weight"),
                         ("linear", "head.4.weight"), ("conv", "head.3.weight")):
        if last in state:
            return {"fusion": fusion, "n_classes": int(state[last].shape[0])}
    return {}


class EmotiRAMFace(Encoder):
    """CAER-Net-S face encoding stream with a one-stream fusion head."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        linear = spec.options["fusion"] == "linear"
        blocks, in_channels = [], 3
        for index, out_channels in enumerate(FACE_STREAM_CHANNELS):
            last = index == len(FACE_STREAM_CHANNELS) - 1
            blocks.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.Identity() if linear and last else nn.MaxPool2d(2),
            ))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        n_classes, dropout = spec.heads["expression"], spec.options["dropout"]
        if linear:
            self.head = nn.Sequential(
                nn.BatchNorm1d(in_channels), nn.Linear(in_channels, 128), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Linear(128, n_classes),
            )
        else:
            self.head = nn.Sequential(
                nn.Conv2d(in_channels, 128, kernel_size=1), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Conv2d(128, n_classes, kernel_size=1),
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pool(self.features(images))
        if self.spec.options["fusion"] == "linear":
            return {"expression": self.head(pooled.flatten(1))}
        return {"expression": self.head(pooled).flatten(1)}

    # -------------------------------------------------------------- key-mapping hook

    def map_checkpoint_keys(self, state, config=None):
        if not any(key.startswith(_REPO_STREAM) for key in state):
            return state, "affbench"
        args = ((config or {}).get("arch") or {}).get("args")
        if args is not None and (
            args.get("use_context", True) or not args.get("concat", False) or not args.get("use_face", True)
        ):
            raise AffbenchError(
                f"The CAER checkpoint was trained with arch args {dict(args)}: its prediction depends on the "
                "context stream, which emotiram-f (the face stream alone) does not have."
            )
        renamed = {}
        for key, value in state.items():
            if match := re.match(re.escape(_REPO_STREAM) + r"(convs|bn)\.(\d+)\.(.*)", key):
                renamed[f"features.{match[2]}.{0 if match[1] == 'convs' else 1}.{match[3]}"] = value
            elif match := re.match(r"fusion_net\.(conv1|conv2|face_bn|fc2)\.(.*)", key):
                index = {"conv1": 0, "conv2": 3, "face_bn": 0, "fc2": 4}[match[1]]
                renamed[f"head.{index}.{match[2]}"] = value
            elif key == "fusion_net.fc1.weight":
                # Only the face half of the fused 512 features is non-zero in the face configuration.
                renamed["head.1.weight"] = value[:, : FACE_STREAM_CHANNELS[-1]] if value.shape[1] == 512 else value
            elif key == "fusion_net.fc1.bias":
                renamed["head.1.bias"] = value
            else:
                renamed[key] = value
        if "fusion_net.fc1.weight" not in state:
            return renamed, _ORIG_LAYOUT
        return renamed, _FACE_CONFIG_LAYOUT + ("" if args is not None else _CONFIG_NOT_SAVED)

    def expected_checkpoint_gaps(self, layout):
        if layout.startswith(_FACE_CONFIG_LAYOUT):
            # Built by model.py in every configuration, but feeding nothing when use_context is false
            # and concat is true.
            return (), (
                "two_stream_net.context_encoding_module.", "two_stream_net.attention_inference_module.",
                "fusion_net.context_bn.", "fusion_net.face_1.", "fusion_net.face_2.",
                "fusion_net.context_1.", "fusion_net.context_2.",
            )
        return (), ()


@register_encoder(spec=_spec, infer=_infer)
def emotiram_f(
    *, n_classes: int = 7, input_size: int = 96, dropout: float = 0.5, fusion: str = "conv", pretrained=None,
    partial_load: bool = False,
) -> EmotiRAMFace:
    """EmotiRAM face stream (CAER-Net-S): 5 conv blocks 32-64-128-256-256, GAP, 1x1-conv head; 96x96; expression 7."""
    spec = _spec("emotiram-f", dict(n_classes=n_classes, input_size=input_size, dropout=dropout, fusion=fusion))
    return apply_pretrained(EmotiRAMFace(spec), pretrained, load_imagenet=None, partial=partial_load)
