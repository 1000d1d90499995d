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
"""

from affbench.encoders.registry import (
    Encoder,
    EncoderSpec,
    count_parameters,
    create_encoder,
    describe_encoder,
    get_encoder_spec,
    list_encoders,
    register_encoder,
)
from affbench.encoders.weights import LoadReport, load_checkpoint

# Importing the family modules registers their variants, in the order the seeds present them.
from affbench.encoders import caer, fan, megraph, inception, vgg  # noqa: E402,F401  isort: skip

__all__ = [
    "Encoder",
    "EncoderSpec",
    "LoadReport",
    "count_parameters",
    "create_encoder",
    "describe_encoder",
    "get_encoder_spec",
    "list_encoders",
    "load_checkpoint",
    "register_encoder",
]
