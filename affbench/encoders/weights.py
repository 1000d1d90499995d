"""Pretrained weights: torchvision ImageNet files from the user's torch cache, and checkpoints.

Nothing here downloads. ``"imagenet"`` reads the file torchvision's weights API names, but only from
``torch.hub.get_dir()/checkpoints``; where it is missing the error says which file to put where.
A checkpoint path is read with ``torch.load(weights_only=True)`` (a plain state_dict, or a dict
holding one under ``"state_dict"`` or ``"model"``), renamed by the family's key-mapping hook
(:meth:`Encoder.map_checkpoint_keys`), and loaded only if every key matches apart from the gaps the
family documents for that layout; otherwise one error lists what did not match.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from affbench.errors import AffbenchError
from affbench.files import file_sha256
from affbench.encoders.registry import Encoder


def hub_checkpoint_path(weights) -> Path:
    """Where torchvision keeps the file of a weights enum member, e.g. ``ResNet50_Weights.IMAGENET1K_V1``."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def require_imagenet_file(weights) -> Path:
    """The cached file of a torchvision weights enum member, or one clear error saying where to put it."""
    path = hub_checkpoint_path(weights)
    if not path.is_file():
        raise AffbenchError(
            f"ImageNet weights {type(weights).__name__}.{weights.name} are not in the torch cache: "
            f"download {weights.url} and save it as {path} (affbench never downloads weights)."
        )
    return path


def load_imagenet_state(weights) -> dict[str, torch.Tensor]:
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


def imagenet_description(weights, part: str) -> str:
    """The ``init`` text for a model whose ``part`` came from a torchvision ImageNet file."""
    return (
        f"imagenet (torchvision {type(weights).__name__}.{weights.name}, "
        f"{hub_checkpoint_path(weights).name}) for the {part}; other layers random"
    )


def load_trunk_weights(module: nn.Module, state: dict[str, torch.Tensor], *, drop_prefixes=()) -> None:
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


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, with DataParallel's ``module.`` prefix removed.

    Accepts a plain state dict or a dict holding one under ``"state_dict"`` (Lightning, ME-GraphAU)
    or ``"model"``.
    """
    path = Path(path)
    if not path.is_file():
        raise AffbenchError(f"Checkpoint {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AffbenchError(
            f"Could not read checkpoint {path} as tensors only (torch.load weights_only=True): {exc}; "
            "re-save it with torch.save(model.state_dict(), path)."
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AffbenchError(
            f"Checkpoint {path} holds no state dict (expected a dict of tensors, or one under 'state_dict' or 'model')."
        )
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    path: str
    sha256: str
    layout: str
    loaded: int
    fresh_expected: list[str] = field(default_factory=list)
    dropped_expected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def describe(self) -> str:
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


def _starts(key: str, prefixes) -> bool:
    return any(key.startswith(p) for p in prefixes)


def match_state(model: nn.Module, state: dict[str, torch.Tensor], *, missing_ok=(), unexpected_ok=(), mismatch_ok=()):
    """Split ``state`` against ``model``.

    Returns ``(loadable, problems, fresh_ok, dropped_ok)``: ``problems`` maps "missing",
    "unexpected" and "mismatched" to the keys NOT covered by the allowed prefixes; ``fresh_ok`` are
    allowed model keys that keep their fresh initialisation (missing, or another shape), and
    ``dropped_ok`` allowed checkpoint keys that are not used.
    """
    own = model.state_dict()
    loadable, fresh_ok, dropped_ok = {}, [], []
    problems = {"missing": [], "unexpected": [], "mismatched": []}
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


def load_checkpoint(model: Encoder, path, *, partial: bool = False) -> LoadReport:
    """Load a checkpoint into a built encoder through its family's key-mapping hook.

    Parameters
    ----------
    model : Encoder
        A model from :func:`affbench.encoders.create_encoder`.
    path : str or Path
        A state dict saved by affbench, or a public checkpoint whose layout the family maps
        (ME-GraphAU ResNet-50 for ``megraph-au``; ABAW3 MultiEmotionNet for ``smm-emotionnet`` and,
        partly, ``inceptionv3-mtl``; VGG-Face ``vgg_face_dag`` for ``vggface``).
    partial : bool, default False
        Load what matches and keep the rest at its fresh initialisation, with a warning, instead of
        raising. The tensors left out are named in ``model.spec.init`` either way.

    Returns
    -------
    LoadReport
        Also written, in words, to ``model.spec.init``.

    Raises
    ------
    AffbenchError
        When the file cannot be read, or (unless ``partial``) when keys are missing, left over or of
        another shape beyond the gaps the family documents for the recognised layout.
    """
    path = Path(path).expanduser().resolve()
    state = read_state_dict(path)
    state, layout = model.map_checkpoint_keys(state)
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
        problems.append(f"{len(missing)} missing ({_summary(missing, 3)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_summary(unexpected, 3)})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape ({_summary(mismatched, 3)})")
    if problems and not partial:
        raise AffbenchError(
            f"Checkpoint {path} does not fit encoder {model.spec.name!r} with options {model.spec.options}: "
            + "; ".join(problems)
            + " (load_checkpoint(model, path, partial=True) loads only what matches)."
        )
    model.load_state_dict(loadable, strict=False)
    report = LoadReport(
        path=str(path), sha256=file_sha256(path), layout=layout, loaded=len(loadable),
        fresh_expected=fresh_ok, dropped_expected=dropped_ok, missing=missing, unexpected=unexpected, mismatched=mismatched,
    )
    if problems:
        warnings.warn(f"Partial load of {path} into {model.spec.name!r}: " + "; ".join(problems), stacklevel=2)
    model.spec = model.spec.with_init(report.describe())
    return report


def load_au_checkpoint(
    model: Encoder, path, *, source: str, prefix: str, submodule: Encoder | None = None,
    missing_ok=(), unexpected_ok=(), mismatch_ok=(),
) -> LoadReport:
    """Start an emotion model from the checkpoint of the AU model it is built on.

    The checkpoint's keys (renamed by ``submodule``'s key-mapping hook when the AU model is a
    submodule, whose documented gaps then apply too) get ``prefix`` and are loaded where name and
    shape match. Model keys under ``missing_ok`` (the new emotion head) may be absent;
    keys under ``mismatch_ok`` may differ in shape and then keep their fresh initialisation, which
    is warned about and written into ``model.spec.init``. Anything else raises one AffbenchError.
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
    if problems or not loadable:
        raise AffbenchError(
            f"au_checkpoint {path} is not a {source} checkpoint that fits encoder {model.spec.name!r} "
            f"with options {model.spec.options}: " + ("; ".join(problems) or "no tensor matches") + "."
        )
    model.load_state_dict(loadable, strict=False)
    report = LoadReport(
        path=str(path), sha256=file_sha256(path), layout=layout, loaded=len(loadable),
        fresh_expected=fresh_ok, dropped_expected=dropped_ok,
    )
    reinitialised = [key for key in fresh_ok if not any(key.startswith(p) for p in missing_ok)]
    if reinitialised:
        warnings.warn(
            f"{model.spec.name}: {len(reinitialised)} tensors of the {source} checkpoint have another shape "
            f"and keep their fresh initialisation: {_summary(reinitialised)}.",
            stacklevel=3,
        )
    model.spec = model.spec.with_init(f"au_checkpoint ({source}) " + report.describe())
    return report


def apply_pretrained(model: Encoder, pretrained, load_imagenet) -> Encoder:
    """Shared handling of the ``pretrained`` option: None, ``"imagenet"`` or a checkpoint path.

    ``load_imagenet(model) -> str`` loads the family's ImageNet trunk and returns the ``init`` text.
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
        load_checkpoint(model, pretrained)
        return model
    raise AffbenchError(
        f"Encoder {model.spec.name!r}: pretrained must be None, 'imagenet' or a checkpoint path, got {pretrained!r}."
    )
