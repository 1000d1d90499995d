"""Pretrained weights: torchvision ImageNet files from the user's torch cache, and checkpoints.

Nothing here downloads. ``"imagenet"`` reads the file torchvision's weights API names, but only from
``torch.hub.get_dir()/checkpoints``; where it is missing the error says which file to put where.
A checkpoint path is read with ``torch.load(weights_only=True)`` (a plain state_dict, or a dict
holding one under ``"state_dict"`` or ``"model"``; DataParallel's ``module.`` and a Lightning
wrapper's ``model.`` prefix are removed), renamed by the family's key-mapping hook
(:meth:`Encoder.map_checkpoint_keys`), and loaded only if every model tensor gets a value, apart from
a new head the caller asked for; anything else is one error naming the count and
``partial_load=True``. The tensors that kept their fresh initialisation are listed in
``model.spec.fresh`` either way.

Training scripts that pickle a configuration object next to the weights (the CAER repository's
trainer saves its ``ConfigParser``) are read without running any of their code: only the names in
:data:`FOREIGN_OBJECT_NAMES` are allowed besides tensors and plain containers, and each is rebuilt as
an inert :class:`ForeignObject` (or a path as a string) holding its pickled attributes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import torch
from torch import nn

from affbench.encoders.registry import Encoder
from affbench.errors import AffbenchError
from affbench.runtime.files import file_sha256

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

#: An encoder of any family; :func:`apply_pretrained` hands back the model it was given.
E = TypeVar("E", bound=Encoder)


def hub_checkpoint_path(weights: WeightsEnum) -> Path:
    """Where torchvision keeps the file of a weights enum member, e.g. ``ResNet50_Weights.IMAGENET1K_V1``."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


class MissingWeightsError(AffbenchError):
    """A torchvision ImageNet file that is not in the torch cache, or not the published file;
    ``instruction`` says what to do about it, for a list of several."""

    def __init__(self, message: str, instruction: str):
        super().__init__(message)
        self.instruction = instruction


#: Files whose SHA-256 prefix was checked, by (path, size, modification time): hashed once per change.
_VERIFIED: set[tuple[str, int, int]] = set()


def require_imagenet_file(weights: WeightsEnum, *, verify: bool = False) -> Path:
    """The cached file of a torchvision weights enum member, or one clear error saying where to put it.

    With ``verify``, the file's SHA-256 must start with the hex digits in its name (torchvision's
    naming, e.g. ``resnet50-0676ba61.pth``), which is how a user checks a download by hand too:
    ``sha256sum FILE``.
    """
    path = hub_checkpoint_path(weights)
    name = f"{type(weights).__name__}.{weights.name}"
    if not path.is_file():
        instruction = f"download {weights.url} and save it as {path}"
        raise MissingWeightsError(f"ImageNet weights {name} are not in the torch cache: {instruction} "
                                  "(affbench never downloads weights).", instruction)
    expected = re.search(r"-([0-9a-f]{8,})\.[^.]+$", path.name)
    stat = path.stat()
    stamp = (str(path), stat.st_size, stat.st_mtime_ns)
    if verify and expected and stamp not in _VERIFIED:
        if not file_sha256(path).startswith(expected[1]):
            instruction = f"download {weights.url} again and save it as {path}"
            raise MissingWeightsError(
                f"The ImageNet weights file {path} is not the one torchvision published (its SHA-256 does not "
                f"start with {expected[1]}, as its name says; an interrupted download?): {instruction}.", instruction)
        _VERIFIED.add(stamp)
    return path


def load_imagenet_state(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum member, from the local torch hub cache only.

    Raises
    ------
    AffbenchError
        When the file is not in the cache (nothing is downloaded).
    """
    path = require_imagenet_file(weights)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise AffbenchError(f"Could not read ImageNet weights file {path}: {exc}.") from None


def imagenet_description(weights: WeightsEnum, part: str) -> str:
    """The ``init`` text for a model whose ``part`` came from a torchvision ImageNet file."""
    return (
        f"imagenet (torchvision {type(weights).__name__}.{weights.name}, "
        f"{hub_checkpoint_path(weights).name}) for the {part}; other layers random"
    )


def load_trunk_weights(
    module: nn.Module, state: dict[str, torch.Tensor], *, drop_prefixes: Iterable[str] = ()
) -> None:
    """Load a torchvision state dict into a (possibly cut) trunk: every trunk key must be present.

    Keys under ``drop_prefixes`` (the layers the trunk cut away, e.g. ``fc.``) are ignored; any other
    difference is a programming error and raises.
    """
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"trunk weights do not fit: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


class ForeignObject:
    """An allow-listed object from a checkpoint, rebuilt without its class: only its attributes."""

    attributes: dict[str, Any]

    def __setstate__(self, state: object) -> None:
        self.attributes = state if isinstance(state, dict) else {"state": state}


def _path_text(*parts: object) -> str:
    """A pickled ``pathlib`` path, kept as text (no path object, no file-system access)."""
    return "/".join(str(part) for part in parts)


#: The only non-tensor globals a checkpoint may name: the CAER trainer's configuration object and the
#: paths inside it. Everything else that is not a tensor or a plain container is refused by torch.
FOREIGN_OBJECT_NAMES: dict[str, Callable[..., Any]] = {
    "parse_config.ConfigParser": ForeignObject,
    "pathlib.PosixPath": _path_text,
    "pathlib.WindowsPath": _path_text,
    "pathlib._local.PosixPath": _path_text,
    "pathlib._local.WindowsPath": _path_text,
}


@dataclass
class Checkpoint:
    """The tensors of a checkpoint file and, where its trainer saved one, its configuration dict."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None


def _strip_common_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file as tensors only.

    Accepts a plain state dict or a dict holding one under ``"state_dict"`` (Lightning, ME-GraphAU,
    the CAER trainer) or ``"model"`` (affbench's ``best.pt``). DataParallel's ``module.`` prefix is
    removed from every key that has it, and a ``model.`` prefix shared by every key (a Lightning
    module wrapping the network) too. A ``"config"`` entry pickled as an allow-listed object
    contributes its ``_config`` dict.
    """
    path = Path(path)
    if not path.is_file():
        raise AffbenchError(f"Checkpoint {path} does not exist.")
    allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (factory, name) for name, factory in FOREIGN_OBJECT_NAMES.items()
    ]
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols say nothing a user can act on
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", str(exc)):
            reason = f"it names {found[1]}, which is neither a tensor nor a plain container and is never run"
        elif "weights_only" in str(exc):  # torch's advice to unpickle the whole file, which affbench never does
            reason = "it holds objects other than tensors and plain containers, which affbench never unpickles"
        raise AffbenchError(
            f"Could not read checkpoint {path} as tensors only (torch.load weights_only=True): {reason}; "
            "re-save it with torch.save(model.state_dict(), path)."
        ) from None
    config = None
    if isinstance(obj, dict):
        holder = obj.get("config")
        if isinstance(holder, ForeignObject) and isinstance(holder.attributes.get("_config"), dict):
            config = holder.attributes["_config"]
        elif isinstance(holder, dict):
            config = holder
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AffbenchError(
            f"Checkpoint {path} holds no state dict (expected a dict of tensors, or one under 'state_dict' or 'model')."
        )
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    return Checkpoint(_strip_common_prefix(state, "model."), config)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (see :func:`read_checkpoint`)."""
    return read_checkpoint(path).state


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did.

    ``fresh_expected``: model tensors the caller asked to start fresh (a new head); ``missing`` and
    ``mismatched``: model tensors the checkpoint did not fill (only with ``partial_load``);
    ``dropped_expected``: checkpoint tensors that feed nothing this model computes.
    """

    path: str
    sha256: str
    layout: str
    loaded: int
    fresh_expected: list[str] = field(default_factory=list)
    dropped_expected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def fresh(self) -> list[str]:
        """Every model tensor that kept its fresh initialisation, by name."""
        return [note.split(" ")[0] for note in self.fresh_expected + self.missing + self.mismatched]

    def describe(self) -> str:
        """The load in words, as ``model.spec.init`` records it."""
        text = f"checkpoint {self.path} (sha256 {self.sha256[:16]}"
        if self.layout != "affbench":
            text += f", {self.layout} layout"
        text += ")"
        left_out = self.fresh_expected + self.missing + self.mismatched
        if left_out:
            text += f"; {len(left_out)} tensors kept their fresh initialisation: {_summary(left_out)}"
        if self.dropped_expected:
            text += f"; {len(self.dropped_expected)} checkpoint tensors not used: {_summary(self.dropped_expected)}"
        return text


def _summary(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _starts(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def match_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    missing_ok: Iterable[str] = (),
    unexpected_ok: Iterable[str] = (),
    mismatch_ok: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], list[str], list[str]]:
    """Split ``state`` against ``model``.

    Returns ``(loadable, problems, fresh_ok, dropped_ok)``: ``problems`` maps "missing",
    "unexpected" and "mismatched" to the keys NOT covered by the allowed prefixes; ``fresh_ok`` are
    allowed model keys that keep their fresh initialisation (missing, or another shape), and
    ``dropped_ok`` allowed checkpoint keys that are not used.
    """
    own = model.state_dict()
    loadable: dict[str, torch.Tensor] = {}
    fresh_ok: list[str] = []
    dropped_ok: list[str] = []
    problems: dict[str, list[str]] = {"missing": [], "unexpected": [], "mismatched": []}
    for key, value in state.items():
        if key not in own:
            (dropped_ok if _starts(key, unexpected_ok) else problems["unexpected"]).append(key)
        elif own[key].shape != value.shape:
            note = f"{key} {tuple(value.shape)}->{tuple(own[key].shape)}"
            (fresh_ok if _starts(key, mismatch_ok) else problems["mismatched"]).append(note)
        else:
            loadable[key] = value
    for key in own:
        if key not in state:
            (fresh_ok if _starts(key, missing_ok) else problems["missing"]).append(key)
    return loadable, problems, fresh_ok, dropped_ok


def _record(model: Encoder, report: LoadReport, prefix: str = "") -> None:
    model.spec = dataclasses.replace(model.spec, init=prefix + report.describe(), fresh=tuple(report.fresh))


def load_checkpoint(model: Encoder, path: str | os.PathLike[str], *, partial: bool = False) -> LoadReport:
    """Load a checkpoint into a built encoder through its family's key-mapping hook.

    Parameters
    ----------
    model : Encoder
        A model from :func:`affbench.encoders.create_encoder`.
    path : str or Path
        A state dict saved by affbench, or a public checkpoint whose layout the family maps
        (ME-GraphAU ResNet-50 stage 1 or 2 for ``megraph-au``; ABAW3 MultiEmotionNet and
        Baseline_Model for ``smm-emotionnet`` and ``inceptionv3-mtl``; the CAER repository's CAER-S
        models for ``emotiram-f``; VGG-Face ``vgg_face_dag`` for ``vggface``).
    partial : bool, default False
        Load what matches and keep the rest at its fresh initialisation, with a warning, instead of
        raising (the ``partial_load=True`` option of :func:`create_encoder`).

    Returns
    -------
    LoadReport
        Also written to ``model.spec.init`` (in words) and ``model.spec.fresh`` (the names of the
        tensors that kept their fresh initialisation).

    Raises
    ------
    AffbenchError
        When the file cannot be read, or (unless ``partial``) when a model tensor would keep its
        fresh initialisation, or a checkpoint tensor is left over or of another shape, beyond the
        gaps (a new head, unused tensors) the family documents for the recognised layout.
    """
    path = Path(path).expanduser().resolve()
    checkpoint = read_checkpoint(path)
    try:
        state, layout = model.map_checkpoint_keys(checkpoint.state, checkpoint.config)
    except AffbenchError as exc:
        raise AffbenchError(f"Checkpoint {path}: {exc}") from None
    missing_ok, unexpected_ok = model.expected_checkpoint_gaps(layout)
    loadable, found, fresh_ok, dropped_ok = match_state(
        model, state, missing_ok=missing_ok, unexpected_ok=unexpected_ok
    )
    missing, unexpected, mismatched = found["missing"], found["unexpected"], found["mismatched"]
    if not loadable:
        raise AffbenchError(
            f"Checkpoint {path} shares no weights with encoder {model.spec.name!r} "
            f"(first keys: {_summary(list(state), 3)}); is it a checkpoint of another variant?"
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensors would keep their fresh initialisation ({_summary(missing, 3)})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape would keep their fresh initialisation "
                        f"({_summary(mismatched, 3)})")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensors have no place in the model ({_summary(unexpected, 3)})")
    if problems and not partial:
        raise AffbenchError(
            f"Checkpoint {path} ({layout} layout) does not fit encoder {model.spec.name!r} with options "
            f"{model.spec.options}: " + "; ".join(problems)
            + "; pass partial_load=True to load only what matches and keep the rest fresh."
        )
    model.load_state_dict(loadable, strict=False)
    report = LoadReport(
        path=str(path), sha256=file_sha256(path), layout=layout, loaded=len(loadable),
        fresh_expected=fresh_ok, dropped_expected=dropped_ok, missing=missing, unexpected=unexpected, mismatched=mismatched,
    )
    if problems:
        warnings.warn(f"Partial load of {path} into {model.spec.name!r}: " + "; ".join(problems), stacklevel=2)
    _record(model, report)
    return report


def load_au_checkpoint(
    model: Encoder, path: str | os.PathLike[str], *, source: str, prefix: str, submodule: Encoder | None = None,
    missing_ok: Iterable[str] = (), unexpected_ok: Iterable[str] = (), mismatch_ok: Iterable[str] = (),
    partial: bool = False, option: str = "au_checkpoint",
    hints: dict[str, str] | None = None,
) -> LoadReport:
    """Start a model from the checkpoint of a model it is built on (an AU model, or stage 1).

    The checkpoint's keys (renamed by ``submodule``'s key-mapping hook when the source model is a
    submodule, whose documented gaps then apply too) get ``prefix`` and are loaded where name and
    shape match. Model keys under ``missing_ok`` (the new part the caller asked for: an emotion head,
    MEFL) may be absent; keys under ``mismatch_ok`` may differ in shape and then keep their fresh
    initialisation, which is warned about. Anything else raises one AffbenchError unless ``partial``;
    ``hints`` (key prefix -> why such tensors may not fit) are added to that error for the prefixes
    among its keys. ``model.spec.init`` and ``model.spec.fresh`` say what was loaded and what kept
    its fresh values.
    """
    path = Path(path).expanduser().resolve()
    state = read_state_dict(path)
    layout = "affbench"
    if submodule is not None:
        state, layout = submodule.map_checkpoint_keys(state)
        sub_missing, sub_unexpected = submodule.expected_checkpoint_gaps(layout)
        missing_ok = tuple(missing_ok) + tuple(prefix + p for p in sub_missing)
        unexpected_ok = tuple(unexpected_ok) + tuple(prefix + p for p in sub_unexpected)
    state = {prefix + key: value for key, value in state.items()}
    loadable, found, fresh_ok, dropped_ok = match_state(
        model, state, missing_ok=missing_ok, unexpected_ok=unexpected_ok, mismatch_ok=mismatch_ok
    )
    problems = [f"{len(keys)} {kind} ({_summary(keys, 3)})" for kind, keys in found.items() if keys]
    problem_keys = [note.split(" ")[0] for keys in found.values() for note in keys]
    problems += [why for prefix, why in (hints or {}).items() if any(k.startswith(prefix) for k in problem_keys)]
    if not loadable or (problems and not partial):
        raise AffbenchError(
            f"{option} {path} is not a {source} checkpoint that fits encoder {model.spec.name!r} "
            f"with options {model.spec.options}: " + ("; ".join(problems) or "no tensor matches")
            + ("; pass partial_load=True to load only what matches." if loadable else ".")
        )
    model.load_state_dict(loadable, strict=False)
    report = LoadReport(
        path=str(path), sha256=file_sha256(path), layout=layout, loaded=len(loadable),
        fresh_expected=fresh_ok, dropped_expected=dropped_ok, missing=found["missing"],
        unexpected=found["unexpected"], mismatched=found["mismatched"],
    )
    reinitialised = [key for key in fresh_ok if not any(key.startswith(p) for p in missing_ok)]
    reinitialised += found["missing"] + found["mismatched"]
    if reinitialised:
        warnings.warn(
            f"{model.spec.name}: {len(reinitialised)} tensors are not filled by the {source} checkpoint "
            f"and keep their fresh initialisation: {_summary(reinitialised)}.",
            stacklevel=3,
        )
    _record(model, report, prefix=f"{option} ({source}) ")
    return report


def is_checkpoint_path(value: object) -> bool:
    """Whether a ``pretrained`` value names a checkpoint file (not None, not ``"imagenet"``)."""
    return isinstance(value, os.PathLike) or (isinstance(value, str) and value != "imagenet")


def apply_pretrained(
    model: E,
    pretrained: str | os.PathLike[str] | None,
    load_imagenet: Callable[[E], str] | None,
    *,
    partial: bool = False,
) -> E:
    """Shared handling of the ``pretrained`` option: None, ``"imagenet"`` or a checkpoint path.

    ``load_imagenet(model) -> str`` loads the family's ImageNet trunk and returns the ``init`` text.
    ``partial`` is the factory's ``partial_load`` option (see :func:`load_checkpoint`).
    """
    if pretrained is None:
        return model
    if isinstance(pretrained, str) and pretrained == "imagenet":
        if load_imagenet is None:
            raise AffbenchError(
                f"Encoder {model.spec.name!r} has no ImageNet-pretrained part; use pretrained=None or a checkpoint path."
            )
        model.spec = model.spec.with_init(load_imagenet(model))
        return model
    if isinstance(pretrained, (str, os.PathLike)):
        load_checkpoint(model, pretrained, partial=partial)
        return model
    raise AffbenchError(
        f"Encoder {model.spec.name!r}: pretrained must be None, 'imagenet' or a checkpoint path, got {pretrained!r}."
    )
