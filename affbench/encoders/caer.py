"""EmotiRAM-f: the face stream of EmotiRAM (Costa et al. 2021), built on CAER-Net-S (Lee et al. 2019).

EmotiRAM's code is not public; its face stream is CAER-Net-S's face encoding stream: five 3x3
convolutions with 32, 64, 128, 256 and 256 channels, each followed by batch norm, ReLU and 2x2
max-pooling, then global average pooling. The CAER-Net fusion head, used here as the classifier, is a
1x1 convolution 256 -> 128, ReLU, dropout and a 1x1 convolution 128 -> n_classes. Input: 96x96 faces.
"""

from __future__ import annotations

import torch
from torch import nn

from affbench.encoders.registry import (
    IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderSpec, check_positive, register_encoder,
)
from affbench.encoders.weights import apply_pretrained
from affbench.errors import AffbenchError

#: Channels of the five convolution blocks of the CAER-Net-S face stream.
FACE_STREAM_CHANNELS = (32, 64, 128, 256, 256)


def _spec(name: str, options: dict) -> EncoderSpec:
    check_positive(name, "n_classes", options["n_classes"])
    check_positive(name, "input_size", options["input_size"])
    if not 0.0 <= options["dropout"] < 1.0:
        raise AffbenchError(f"Encoder {name!r}: option dropout must be in [0, 1), got {options['dropout']!r}.")
    return EncoderSpec(
        name=name, family="caer", input_size=options["input_size"], mean=IMAGENET_MEAN, std=IMAGENET_STD,
        heads={"expression": options["n_classes"]}, au_output=None, options=dict(options),
    )


class EmotiRAMFace(Encoder):
    """CAER-Net-S face encoding stream with the 1x1-convolution classifier head."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        blocks, in_channels = [], 3
        for out_channels in FACE_STREAM_CHANNELS:
            blocks.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, 128, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.options["dropout"]),
            nn.Conv2d(128, spec.heads["expression"], kernel_size=1),
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pool(self.features(images))
        return {"expression": self.head(pooled).flatten(1)}


@register_encoder(spec=_spec)
def emotiram_f(*, n_classes: int = 7, input_size: int = 96, dropout: float = 0.5, pretrained=None) -> EmotiRAMFace:
    """EmotiRAM face stream (CAER-Net-S): 5 conv blocks 32-64-128-256-256, GAP, 1x1-conv head; 96x96; expression 7."""
    spec = _spec("emotiram-f", dict(n_classes=n_classes, input_size=input_size, dropout=dropout))
    return apply_pretrained(EmotiRAMFace(spec), pretrained, load_imagenet=None)
