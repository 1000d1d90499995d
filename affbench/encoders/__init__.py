"""Encoder variants the seed papers compare, behind one registry.

>>> from affbench.encoders import create_encoder, list_encoders, get_encoder_spec
>>> list_encoders()[:3]
['emotiram-f', 'fan-au', 'emotiram-fau']

Every variant is built by ``create_encoder(name, **options)``; ``model.spec`` (an
:class:`EncoderSpec`) gives its input size, normalisation, heads and initialisation, and
``model(images)`` returns a dict with the heads it has: ``au``, ``expression``, ``va``, and
``heatmaps`` for the heatmap models. Families: :mod:`.caer` (EmotiRAM-f), :mod:`.fan` (Fan et al.,
EmotiRAM-FAU), :mod:`.megraph` (ME-GraphAU, EmotiRAM-FAU-ME-Graph), :mod:`.inception`
(SMM-EmotionNet, InceptionV3 multitask) and :mod:`.vgg` (VGG-Face).

What a training harness needs to know:

- Normalise with ``model.spec.mean`` / ``model.spec.std`` of the *built* model (loading VGG-Face
  weights changes them) and resize crops to ``spec.input_size``.
- ``spec.au_output`` says what ``au`` holds: "logits" (use a sigmoid / BCE-with-logits),
  "probabilities" (ME-GraphAU's cosine scores, already in [0, 1]) or "intensities" (0-5, the
  heatmap models, which are trained on ``heatmaps`` with MSE, not on ``au``).
- Heatmap models (fan-au, emotiram-fau) give ``model.heatmap_targets(landmarks5, intensities,
  image_size=crop_side)``: Gaussian targets for the ``heatmaps`` output from the five aligned
  landmarks in crop pixels and the AU intensities in ``spec.aus`` order (see
  :func:`affbench.encoders.fan.au_points` for the point rule).
- ``create_encoder(spec.name, **spec.options)`` rebuilds an architecture; ``pretrained=PATH`` (or
  :func:`load_checkpoint`) loads a state dict saved from it or a published checkpoint the family
  maps, and the options left out follow the checkpoint's structure. A load that would leave a
  tensor at its fresh initialisation is refused unless ``partial_load=True``; ``spec.fresh`` lists
  those that did (a new head asked for, or what partial_load let through). emotiram-fau /
  emotiram-fau-megraph take ``au_checkpoint=PATH`` of a fan-au / megraph-au model to start from;
  megraph-au takes ``stage1_checkpoint=PATH`` to start stage 2 from stage 1.
- ``spec.init`` says in words how the weights were initialised; record it with every result.
"""

from pathlib import Path
from typing import Any

from affbench.encoders.registry import (
    WEIGHT_OPTIONS,
    Encoder,
    EncoderSpec,
    count_parameters,
    create_encoder,
    describe_encoder,
    get_encoder_spec,
    list_encoders,
    register_encoder,
)
from affbench.encoders.weights import LoadReport, load_checkpoint, require_imagenet_file
from affbench.errors import AffbenchError

# Importing the family modules registers their variants, in the order the seeds present them.
from affbench.encoders import caer, fan, megraph, inception, vgg  # noqa: E402,F401  isort: skip
from affbench.encoders import trunks  # noqa: E402  isort: skip

#: The torchvision ImageNet file each family's ``pretrained="imagenet"`` reads (EmotiRAM-f has none).
IMAGENET_WEIGHTS = {
    "fan": trunks.RESNET50_IMAGENET,
    "megraph": trunks.RESNET50_IMAGENET,
    "inception": trunks.INCEPTION_V3_IMAGENET,
    "vgg": vgg.VGG16_IMAGENET,
}


def check_weights_available(name: str, **options: Any) -> None:
    """Raise now, with the error building would give, where the file that
    ``create_encoder(name, **options)`` would load for ``pretrained`` is missing. Builds nothing,
    so a benchmark can check every job before the first one trains."""
    pretrained = options.get("pretrained")
    if pretrained is None:
        return
    spec = get_encoder_spec(name, **{k: v for k, v in options.items() if k not in WEIGHT_OPTIONS})
    if pretrained == "imagenet":
        if spec.family not in IMAGENET_WEIGHTS:
            raise AffbenchError(
                f"Encoder {name!r} has no ImageNet-pretrained part; use pretrained=None or a checkpoint path."
            )
        require_imagenet_file(IMAGENET_WEIGHTS[spec.family], verify=True)
    elif not Path(pretrained).is_file():
        raise AffbenchError(f"Encoder {name!r}: the pretrained checkpoint {pretrained} does not exist.")

__all__ = [
    "Encoder",
    "EncoderSpec",
    "LoadReport",
    "WEIGHT_OPTIONS",
    "check_weights_available",
    "count_parameters",
    "create_encoder",
    "describe_encoder",
    "get_encoder_spec",
    "list_encoders",
    "load_checkpoint",
    "register_encoder",
]
