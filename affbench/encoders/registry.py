"""The encoder registry: one decorated factory per variant, one interface for all of them.

A variant is registered by decorating its factory function::

    @register_encoder(spec=my_family_spec)
    def my_variant(*, n_classes=7, pretrained=None) -> Encoder:
        ...

The factory's keyword arguments are the variant's options; their defaults are the paper's
settings. ``spec`` is a cheap function ``spec(name, options) -> EncoderSpec`` that computes the
metadata from the resolved options without building a network, so that :func:`get_encoder_spec`
can answer at once (input size, normalisation, heads) and the harness can plan before it builds.

``infer`` (optional) is ``infer(options) -> dict``: the architecture options implied by the
checkpoints the options name (``pretrained``, ``au_checkpoint``...), e.g. the AU count of a
checkpoint's head. An option the caller leaves out follows the checkpoint; one the caller gives
that contradicts it is refused, so a published checkpoint loads with default options and a
structure that cannot hold it is never built silently.

Every built model is an :class:`Encoder`: ``model.spec`` says what it is and how it was initialised,
and ``model(images)`` returns a dict of task outputs (see :class:`EncoderSpec`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import torch
from torch import nn

from affbench.encoders.published import PublishedModel, get_published, is_published_tag
from affbench.errors import AffbenchError, UnknownNameError

#: ImageNet statistics, used by every variant whose trunk comes from torchvision.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: What the ``au`` output of a variant holds.
AU_OUTPUT_KINDS = ("logits", "probabilities", "intensities")

#: Options every factory understands but that describe weights rather than architecture; they are
#: left out of ``EncoderSpec.options`` so that ``create_encoder(spec.name, **spec.options)`` rebuilds
#: the same architecture with fresh weights.
WEIGHT_OPTIONS = ("pretrained", "au_checkpoint", "stage1_checkpoint", "partial_load")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder variant is, without its weights.

    Attributes
    ----------
    name : str
        The registry name, e.g. ``"fan-au"``.
    family : str
        The model family (one module in ``affbench.encoders``), e.g. ``"fan"``.
    input_size : int
        Side of the square input the variant is built for; the harness resizes crops to it.
    mean, std : tuple of 3 floats
        Per-channel normalisation of RGB images scaled to [0, 1]:
        ``images = (rgb01 - mean) / std`` before ``forward``.
    heads : dict[str, int]
        Output key -> size of its last dimension: ``au`` (n_aus), ``expression`` (n_classes),
        ``va`` (2), and ``heatmaps`` (number of heatmap points) for the heatmap models.
    au_output : {"logits", "probabilities", "intensities"} or None
        What the ``au`` output holds: logits (apply a sigmoid), probabilities in [0, 1] already, or
        intensities on the 0-5 FACS scale. None when the variant has no ``au`` head.
    init : str
        How the weights were initialised, in plain words: ``"random"``,
        ``"imagenet (torchvision ResNet50_Weights.IMAGENET1K_V1) for the trunk; other layers random"``,
        ``"checkpoint /path/x.pth (sha256 1a2b...)"``.
    options : dict[str, Any]
        The resolved architecture options (defaults filled in, weight options left out):
        ``create_encoder(spec.name, **spec.options)`` rebuilds the same network.
    aus : tuple of int or None
        The FACS numbers the ``au`` head and the heatmap points stand for, where the architecture
        fixes them (the heatmap models place two points per AU); None otherwise.
    heatmap_size : int or None
        Side of the square heatmaps for the heatmap models (a quarter of ``input_size``).
    fresh : tuple of str
        After a checkpoint load: the names of the model tensors that kept their fresh initialisation
        (a new head the caller asked for, or whatever ``partial_load=True`` let through).
    published : str or None
        The tag of the released checkpoint the weights came from (:mod:`affbench.encoders.published`),
        for a model built as ``create_encoder(tag, pretrained=PATH)``.
    """

    name: str
    family: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    heads: dict[str, int]
    au_output: str | None
    init: str = "random"
    options: dict[str, Any] = field(default_factory=dict)
    aus: tuple[int, ...] | None = None
    heatmap_size: int | None = None
    fresh: tuple[str, ...] = ()
    published: str | None = None

    def __post_init__(self) -> None:
        if self.au_output is not None and self.au_output not in AU_OUTPUT_KINDS:
            raise ValueError(f"au_output must be one of {AU_OUTPUT_KINDS} or None, got {self.au_output!r}")
        if (self.au_output is None) != ("au" not in self.heads):
            raise ValueError("au_output must be given exactly when the variant has an 'au' head")

    def with_init(self, init: str) -> EncoderSpec:
        """The same spec with another initialisation description."""
        return dataclasses.replace(self, init=init)


class Encoder(nn.Module):
    """Base class of every registered variant.

    Subclasses set ``self.spec`` in ``__init__`` and implement ``forward(images) -> dict``.
    ``checkpoint_layouts`` and ``expected_checkpoint_gaps`` are the family's key-mapping hook used
    by :func:`affbench.encoders.weights.load_checkpoint`.
    """

    spec: EncoderSpec

    def map_checkpoint_keys(
        self, state: dict[str, torch.Tensor], config: dict | None = None
    ) -> tuple[dict[str, torch.Tensor], str]:
        """Rename the keys of a foreign checkpoint to this model's names.

        Returns the renamed state and the name of the layout that was recognised (``"affbench"``
        when the keys already are this model's own). ``config`` is the training configuration a
        trainer saved next to the weights (a dict, read without running code), or None; a family
        raises AffbenchError when it says the model computed something this one cannot. Families
        that can read public checkpoints override this.
        """
        return state, "affbench"

    def expected_checkpoint_gaps(self, layout: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Key prefixes that may be missing from / left over in a checkpoint of ``layout``.

        Returns ``(missing_ok, unexpected_ok)``. Anything else that does not match is an error.
        """
        return (), ()


#: ``spec(name, options) -> EncoderSpec``: a variant's metadata from its resolved options.
SpecFunction = Callable[[str, dict[str, Any]], EncoderSpec]
#: ``infer(options) -> dict``: the architecture options the checkpoints named in ``options`` imply.
InferFunction = Callable[[dict[str, Any]], dict[str, Any]]
#: A registered factory: its keyword arguments are the variant's options.
Factory = TypeVar("Factory", bound=Callable[..., Encoder])

_REGISTRY: dict[str, tuple[Callable[..., Encoder], SpecFunction | None, str]] = {}
_INFER: dict[str, InferFunction] = {}


@overload
def register_encoder(fn: Factory, *, spec: SpecFunction | None = None, name: str | None = None,
                     infer: InferFunction | None = None) -> Factory: ...


@overload
def register_encoder(fn: None = None, *, spec: SpecFunction | None = None, name: str | None = None,
                     infer: InferFunction | None = None) -> Callable[[Factory], Factory]: ...


def register_encoder(fn: Factory | None = None, *, spec: SpecFunction | None = None,
                     name: str | None = None, infer: InferFunction | None = None
                     ) -> Factory | Callable[[Factory], Factory]:
    """Register an encoder factory under ``name`` (default: the function name with ``_`` -> ``-``).

    Usable bare (``@register_encoder``) or with arguments (``@register_encoder(spec=...)``).

    Parameters
    ----------
    fn : callable, optional
        The factory, when used bare.
    spec : callable, optional
        ``spec(name, options) -> EncoderSpec``; must not build the network. Without it,
        :func:`get_encoder_spec` builds the variant on the meta device (no memory, no weights) and
        reads ``model.spec``; every built-in variant gives one.
    name : str, optional
        Registry name.
    infer : callable, optional
        ``infer(options) -> dict``: architecture options implied by the checkpoints named in the
        caller's options (see the module docstring).

    Returns
    -------
    callable
        The factory itself (bare use), or the decorator that registers it and returns it.

    Examples
    --------
    >>> from affbench.encoders import list_encoders
    >>> "fan-au" in list_encoders()
    True
    """

    def decorate(factory: Factory) -> Factory:
        key = name or factory.__name__.replace("_", "-")
        if key in _REGISTRY:
            raise ValueError(f"encoder {key!r} is registered twice")
        _REGISTRY[key] = (factory, spec, factory.__doc__.strip().splitlines()[0] if factory.__doc__ else "")
        if infer is not None:
            _INFER[key] = infer
        return factory

    return decorate(fn) if fn is not None else decorate


def list_encoders() -> list[str]:
    """Names of every registered encoder variant, in registration order."""
    return list(_REGISTRY)


def _lookup(name: str) -> tuple[Callable[..., Encoder], SpecFunction | None, str]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("encoder", name, list_encoders()) from None


def encoder_options(name: str) -> dict[str, Any]:
    """The options of a variant (its factory's keyword arguments) with their defaults, in order.

    Examples
    --------
    >>> "pretrained" in encoder_options("fan-au")
    True
    """
    factory, _, _ = _lookup(name)
    return {key: p.default for key, p in inspect.signature(factory).parameters.items()
            if p.default is not inspect.Parameter.empty}


def resolve_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The factory's keyword arguments: defaults, then what the named checkpoints imply, then the
    caller's options. Unknown options, and given options that contradict a checkpoint, are user errors."""
    factory, _, _ = _lookup(name)
    parameters = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        valid = ", ".join(p for p in parameters)
        raise AffbenchError(f"Encoder {name!r} has no option {unknown[0]!r}; its options are: {valid}.")
    resolved = {key: p.default for key, p in parameters.items() if p.default is not inspect.Parameter.empty}
    implied = _INFER[name](dict(options)) if name in _INFER else {}
    if not options.get("partial_load"):
        for key, value in implied.items():
            if key in options and options[key] != value:
                raise AffbenchError(
                    f"Encoder {name!r}: the checkpoint given is a {key}={value!r} model, but {key}={options[key]!r} "
                    f"was asked; leave {key} out to follow the checkpoint (or pass partial_load=True)."
                )
    resolved.update(implied)
    resolved.update(options)
    return resolved


def get_encoder_spec(name: str, **options: Any) -> EncoderSpec:
    """Metadata of a variant (input size, normalisation, heads) without building the network.

    Parameters
    ----------
    name : str
        A name from :func:`list_encoders`, or a published model's tag (``affbench list models``).
    **options
        The same options :func:`create_encoder` takes; head sizes change ``heads``. A checkpoint
        path in ``pretrained`` (or ``au_checkpoint``...) is read for the structure it implies.

    Examples
    --------
    >>> get_encoder_spec("emotiram-f").heads
    {'expression': 7}
    >>> get_encoder_spec("vggface", task="va").heads
    {'va': 2}
    """
    if is_published_tag(name):
        published = get_published(name)
        return get_encoder_spec(published.encoder, **{**published.options, **options})
    factory, spec_fn, _ = _lookup(name)
    resolved = resolve_options(name, options)
    architecture = {k: v for k, v in resolved.items() if k not in WEIGHT_OPTIONS}
    if spec_fn is None:
        with torch.device("meta"):
            return factory(**architecture).spec
    return spec_fn(name, architecture)


def create_encoder(name: str, **options: Any) -> Encoder:
    """Build a registered encoder variant.

    Parameters
    ----------
    name : str
        A name from :func:`list_encoders`, or the tag of a published model (``affbench list
        models``, e.g. ``"megraph-au/resnet50-disfa-fold1"``): its encoder is built with the tag's
        options and ``pretrained`` must name a copy of the released file, whose layout must be the
        tag's (a file of another release is refused in one sentence).
    **options
        The variant's options: head sizes (``n_aus``, ``n_classes``, ...), ``pretrained`` (None,
        ``"imagenet"`` or a checkpoint path) and variant-specific ones (see the factory docstrings
        or ``affbench list encoders``).

    Returns
    -------
    Encoder
        ``model.spec`` describes it; ``model(images)`` returns a dict of task outputs.

    Raises
    ------
    UnknownNameError
        For a name no factory is registered under.
    AffbenchError
        For options the variant does not have or values it cannot take.

    Examples
    --------
    >>> import torch
    >>> model = create_encoder("emotiram-f").eval()
    >>> model(torch.zeros(2, 3, 96, 96))["expression"].shape
    torch.Size([2, 7])
    """
    if is_published_tag(name):
        return _create_published(get_published(name), options)
    factory, _, _ = _lookup(name)
    resolved = resolve_options(name, options)
    model = factory(**resolved)
    if not isinstance(getattr(model, "spec", None), EncoderSpec):
        raise TypeError(f"factory of {name!r} returned a model without an EncoderSpec")
    return model


def _create_published(published: PublishedModel, options: Mapping[str, Any]) -> Encoder:
    """The encoder of a published tag with the released file ``options["pretrained"]`` loaded into it,
    refused in one sentence when the file is not that release's layout or structure."""
    from affbench.encoders.weights import is_checkpoint_path, load_checkpoint

    options = dict(options)
    path = options.pop("pretrained", None)
    if not is_checkpoint_path(path):
        raise AffbenchError(
            f"{published.tag} is a released checkpoint: pass pretrained=PATH, your copy of {published.file_name} "
            f"(published at {published.published_at.split(' ')[0]}); affbench downloads nothing."
        )
    options = {**published.options, **options}
    implied = _INFER[published.encoder]({"pretrained": path}) if published.encoder in _INFER else {}
    for key, value in implied.items():
        if key in published.options and published.options[key] != value:
            raise AffbenchError(
                f"{path} is not a {published.tag} checkpoint: it holds a {published.encoder} model with "
                f"{key}={value!r}, where {published.tag} has {key}={published.options[key]!r}; is it the file of "
                "another release?"
            )
    factory, _, _ = _lookup(published.encoder)
    # What the file implies fills the options neither the tag nor the caller gives; its weights are loaded below.
    resolved = {**resolve_options(published.encoder, {**options, "pretrained": path}), "pretrained": None}
    model = factory(**resolved)
    try:
        report = load_checkpoint(model, path, partial=bool(options.get("partial_load")))
    except AffbenchError as exc:
        raise AffbenchError(f"{path} is not a {published.tag} checkpoint: {exc}") from None
    if not any(report.layout.startswith(layout) for layout in published.layouts):
        raise AffbenchError(
            f"{path} is not a {published.tag} checkpoint: its layout is {report.layout!r}, where {published.tag} "
            f"has the layout {' or '.join(repr(layout) for layout in published.layouts)}."
        )
    model.spec = dataclasses.replace(model.spec, published=published.tag, init=f"{published.tag}: {model.spec.init}")
    return model


def describe_encoder(name: str) -> str:
    """The first line of the variant's factory docstring."""
    return _lookup(name)[2]


def count_parameters(name: str, **options: Any) -> int:
    """Number of parameters of a variant, counted on the meta device (no memory, no weights)."""
    options = {k: v for k, v in options.items() if k not in WEIGHT_OPTIONS}
    with torch.device("meta"):
        model = create_encoder(name, **options)
    return sum(p.numel() for p in model.parameters())


def check_choice(name: str, option: str, value: object, choices: Collection[object]) -> None:
    """Raise the one-sentence error for an option value outside ``choices``."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise AffbenchError(f"Encoder {name!r}: option {option} must be one of {listed}, got {value!r}.")


def check_positive(name: str, option: str, value: object) -> None:
    """Raise the one-sentence error for a size option that is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AffbenchError(f"Encoder {name!r}: option {option} must be a positive integer, got {value!r}.")
