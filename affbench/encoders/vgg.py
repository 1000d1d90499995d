"""The single-task VGG-Face baseline of the ABAW challenges (Kollias & Zafeiriou).

VGG-16 (torchvision, without batch norm) whose last FC layer is resized to the task asked: ``au``
(12 logits), ``expression`` (8 logits; the ABAW2 baseline had 7 classes) or ``va`` (2 values). One
network per task. Input 224x224.

Weights: ``pretrained="imagenet"`` loads torchvision's VGG16 ImageNet file (all but the last layer);
a VGG-Face checkpoint in the layout of Albanie's PyTorch conversion ``vgg_face_dag.pth`` (keys
``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``, ``fc8``) loads through the key-mapping hook, all but
``fc8`` (2622 identities). VGG-Face expects other input scaling than ImageNet models (0-255 RGB minus
the VGG-Face mean): ``normalization="vggface"`` sets ``spec.mean``/``spec.std`` accordingly, and the
default ``normalization=None`` picks it automatically when ``pretrained`` is such a checkpoint.
"""

from __future__ import annotations

import torch
import torchvision
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
from affbench.encoders.weights import (
    apply_pretrained,
    imagenet_description,
    load_imagenet_state,
    load_trunk_weights,
    read_state_dict,
)

VGG16_IMAGENET = torchvision.models.VGG16_Weights.IMAGENET1K_V1
TASKS = ("au", "expression", "va")
#: The VGG-Face mean (RGB, 0-255) with unit std: in affbench's [0, 1] convention, mean/255 and 1/255.
VGGFACE_MEAN = (129.186279296875 / 255, 104.76238250732422 / 255, 93.59396362304688 / 255)
VGGFACE_STD = (1 / 255, 1 / 255, 1 / 255)

#: vgg_face_dag layer name -> torchvision VGG-16 module path.
_VGG_FACE_DAG_NAMES = {
    "conv1_1": "features.0", "conv1_2": "features.2",
    "conv2_1": "features.5", "conv2_2": "features.7",
    "conv3_1": "features.10", "conv3_2": "features.12", "conv3_3": "features.14",
    "conv4_1": "features.17", "conv4_2": "features.19", "conv4_3": "features.21",
    "conv5_1": "features.24", "conv5_2": "features.26", "conv5_3": "features.28",
    "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "fc8",
}


def is_vgg_face_dag(state: dict) -> bool:
    return "conv1_1.weight" in state and "fc7.weight" in state


def _spec(name: str, options: dict) -> EncoderSpec:
    check_choice(name, "task", options["task"], TASKS)
    options = {**options, "normalization": options["normalization"] or "imagenet"}
    check_choice(name, "normalization", options["normalization"], ("imagenet", "vggface"))
    check_positive(name, "n_aus", options["n_aus"])
    check_positive(name, "n_classes", options["n_classes"])
    check_positive(name, "input_size", options["input_size"])
    size = {"au": options["n_aus"], "expression": options["n_classes"], "va": 2}[options["task"]]
    vggface = options["normalization"] == "vggface"
    return EncoderSpec(
        name=name, family="vgg", input_size=options["input_size"],
        mean=VGGFACE_MEAN if vggface else IMAGENET_MEAN, std=VGGFACE_STD if vggface else IMAGENET_STD,
        heads={options["task"]: size}, au_output="logits" if options["task"] == "au" else None, options=dict(options),
    )


class VGGFace(Encoder):
    """VGG-16 with the last FC layer sized for one task."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        (self.task, size), = spec.heads.items()
        full = torchvision.models.vgg16(weights=None)
        self.features, self.avgpool, self.classifier = full.features, full.avgpool, full.classifier
        self.classifier[6] = nn.Linear(self.classifier[6].in_features, size)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.avgpool(self.features(images)).flatten(1)
        return {self.task: self.classifier(x)}

    def load_imagenet(self) -> str:
        load_trunk_weights(self, load_imagenet_state(VGG16_IMAGENET), drop_prefixes=("classifier.6.",))
        return imagenet_description(VGG16_IMAGENET, "VGG-16 layers (all but the last FC)")

    def map_checkpoint_keys(self, state, config=None):
        if not is_vgg_face_dag(state):
            return state, "affbench"
        renamed = {}
        for key, value in state.items():
            layer, param = key.rsplit(".", 1)
            renamed[f"{_VGG_FACE_DAG_NAMES.get(layer, layer)}.{param}"] = value
        return renamed, "VGG-Face vgg_face_dag"

    def expected_checkpoint_gaps(self, layout):
        if layout == "VGG-Face vgg_face_dag":
            return ("classifier.6.",), ("fc8.",)
        return (), ()


@register_encoder(spec=_spec)
def vggface(
    *, task: str = "au", n_aus: int = 12, n_classes: int = 8, input_size: int = 224, normalization=None,
    pretrained=None, partial_load: bool = False,
) -> VGGFace:
    """VGG-Face single-task baseline: VGG-16 with its last FC layer sized for task= au (12), expression (8) or va (2); 224x224."""
    if normalization is None:
        vggface_weights = isinstance(pretrained, str) and pretrained != "imagenet" or hasattr(pretrained, "__fspath__")
        normalization = "vggface" if vggface_weights and is_vgg_face_dag(read_state_dict(pretrained)) else "imagenet"
    options = dict(task=task, n_aus=n_aus, n_classes=n_classes, input_size=input_size, normalization=normalization)
    return apply_pretrained(VGGFace(_spec("vggface", options)), pretrained, lambda m: m.load_imagenet(), partial=partial_load)
