"""The torchvision trunks the seeds build on: ResNet-50 (to layer4) and InceptionV3 (to Mixed_6e).

Both keep torchvision's layer names, so torchvision ImageNet files load into them key for key (the
cut-away layers are dropped), and checkpoints of the reference implementations map onto them by a
prefix. ImageNet files are read from the local torch cache only (see ``weights.load_imagenet_state``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn

from affbench.encoders.weights import imagenet_description, load_imagenet_state, load_trunk_weights

#: The ImageNet weights used for ResNet-50 trunks: V1 is the file ME-GraphAU started from
#: (torchvision's re-export of resnet50-19c8e357).
RESNET50_IMAGENET = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
INCEPTION_V3_IMAGENET = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1

_RESNET_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

#: InceptionV3 up to Mixed_6e, in order (torchvision names); 768 x 17 x 17 from a 299 input.
INCEPTION_TO_MIXED_6E = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
)
INCEPTION_MIXED_6E_CHANNELS = 768


class ResNet50Trunk(nn.Module):
    """torchvision ResNet-50 without average pooling and classifier: (B, 3, S, S) -> (B, 2048, S/32, S/32)."""

    out_channels = 2048
    stride = 32

    def __init__(self) -> None:
        super().__init__()
        full = torchvision.models.resnet50(weights=None)
        for name in _RESNET_LAYERS:
            setattr(self, name, getattr(full, name))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for name in _RESNET_LAYERS:
            x = getattr(self, name)(x)
        return x

    def load_imagenet(self) -> str:
        load_trunk_weights(self, load_imagenet_state(RESNET50_IMAGENET), drop_prefixes=("fc.",))
        return imagenet_description(RESNET50_IMAGENET, "ResNet-50 trunk")


def inception_v3_to_mixed_6e() -> nn.Sequential:
    """torchvision InceptionV3 cut after Mixed_6e, as a Sequential keeping torchvision's layer names.

    Like the ABAW3 reference code, the cut trunk does not apply torchvision's ``transform_input``
    re-scaling: it takes ImageNet-normalised images as they are.
    """
    full = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    return nn.Sequential(OrderedDict((name, getattr(full, name)) for name in INCEPTION_TO_MIXED_6E))


def load_inception_imagenet(trunk: nn.Sequential) -> str:
    state = load_imagenet_state(INCEPTION_V3_IMAGENET)
    load_trunk_weights(trunk, state, drop_prefixes=("Mixed_7", "AuxLogits.", "fc."))
    return imagenet_description(INCEPTION_V3_IMAGENET, "InceptionV3 trunk (to Mixed_6e)")
