"""Checkpoint files that hold only tensors and plain values, and what to do when one is damaged.

A run folder may be shared, copied or tampered with, so nothing in it is unpickled: every checkpoint
is read with ``torch.load(weights_only=True)``, which builds tensors, numbers, strings, lists and
dicts and refuses anything else. What a resumable training state needs beyond that (the NumPy and
Python random states) is stored as tensors and numbers here and rebuilt on loading.

A checkpoint that cannot be read (truncated, garbage, a crafted pickle, or the wrong content) is a
:class:`DamagedCheckpointError`; :func:`set_aside` moves such a file to ``<name>.damaged`` so that
the job can be trained again without losing the evidence.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affbench.errors import AffbenchError
from affbench.runtime.files import atomic_write
from affbench.runtime.run_folder import JobFolder

DAMAGED_SUFFIX = ".damaged"


class DamagedCheckpointError(AffbenchError):
    """A checkpoint file that cannot be read as tensors and plain values."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"The checkpoint {path} is damaged or not an affbench checkpoint ({reason}).")


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` (tensors and plain values only) atomically.

    Through a Python file handle, so that a full disk is an ``OSError`` (torch's own file writer
    turns it into an opaque ``RuntimeError``).
    """
    with atomic_write(path) as tmp, open(tmp, "xb") as handle:
        torch.save(obj, handle)


def load_training_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint as tensors and plain values; anything else is a :class:`DamagedCheckpointError`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols say nothing a user can act on
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch reports damage as many types (UnpicklingError, RuntimeError, EOFError…)
        raise DamagedCheckpointError(path, _damage(path, exc)) from None


def _damage(path: Path, exc: Exception) -> str:
    """What is wrong with a file torch cannot read, as a clause (torch's own messages run to pages,
    advise unpickling the whole file, which affbench never does, or are a bare ``KeyError: 101``)."""
    import zipfile

    if path.stat().st_size == 0:
        return "the file is empty"
    if "weights_only" in str(exc) or "Unsupported global" in str(exc):
        return "it holds objects other than tensors and plain values, which affbench never unpickles"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            zip_start = handle.read(4) == b"PK\x03\x04"
        return "it is cut short: a torch.save archive without its end" if zip_start else \
            "it is not a file written by torch.save"
    first_sentence = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    if not first_sentence or len(first_sentence) > 160:
        return f"PyTorch cannot read it: {type(exc).__name__}, a truncated or altered file"
    return first_sentence


def set_aside(path: str | os.PathLike) -> Path:
    """Move a damaged file to ``<name>.damaged`` (replacing an older one) and return the new path."""
    path = Path(path)
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, target)
    return target


# ----------------------------------------------------------------------------------------- random states


def rng_state() -> dict[str, Any]:
    """Every random state training depends on, as tensors and plain values."""
    legacy_state = np.random.get_state()
    assert isinstance(legacy_state, tuple)  # the legacy form, which the global MT19937 state always has
    kind, keys, position, has_gauss, cached = legacy_state
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    numpy_state, python_state = state["numpy"], state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------- training states

#: Marks a resumable training state written by this version of the format.
TRAIN_STATE_FORMAT = "affbench-train-state/2"
TRAIN_STATE_KEYS = ("format", "model", "optimizer", "scheduler", "rng", "history", "steps", "epoch",
                    "best_epoch", "best_score")


def check_train_state(state: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` (saying what is wrong) unless ``state`` fits ``model`` and ``optimizer``.

    Checked before anything is applied, so that a wrong file never leaves a half-loaded model.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"it holds a {type(state).__name__}, not a training state")
    missing = [k for k in TRAIN_STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"it has no {', '.join(repr(k) for k in missing)}")
    if state["format"] != TRAIN_STATE_FORMAT:
        raise ValueError(f"it is in format {state['format']!r}, not {TRAIN_STATE_FORMAT!r}")
    expected = model.state_dict()
    weights = state["model"]
    if not isinstance(weights, Mapping) or set(weights) != set(expected):
        raise ValueError("its model weights do not have this model's parameter names")
    for name, tensor in expected.items():
        if not isinstance(weights[name], torch.Tensor) or weights[name].shape != tensor.shape:
            raise ValueError(f"its weight {name!r} does not have this model's shape {tuple(tensor.shape)}")
    groups = state["optimizer"].get("param_groups") if isinstance(state["optimizer"], Mapping) else None
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups) or [
            len(g.get("params", ())) for g in groups] != [
            len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("its optimizer state does not fit this model")
    if not isinstance(state["history"], list) or not isinstance(state["epoch"], int):
        raise ValueError("its history is not a list of epochs")


def resume_training_state(
    workdir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """The training state in ``workdir/last.pt``, applied to the model, optimiser, scheduler and random
    states; None to start afresh.

    A ``last.pt`` that cannot be read or does not fit the model, or whose ``best.pt`` is damaged, is
    moved aside as ``*.damaged`` and the job starts again from its first epoch (with a warning):
    a run is never blocked by a bad file, and the file is kept for inspection.
    """
    last_path, best_path = JobFolder(workdir).last, JobFolder(workdir).weights
    if not last_path.is_file():
        return None
    try:
        state = load_training_checkpoint(last_path)
        check_train_state(state, model, optimizer)
    except (DamagedCheckpointError, ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = exc.reason if isinstance(exc, DamagedCheckpointError) else str(exc)
        moved = set_aside(last_path)
        log(f"warning: {last_path} cannot be resumed from ({reason}); moved it to {moved.name} and "
            "training this job again from its first epoch.")
        return None
    if state["best_epoch"] is not None:
        try:
            _match_best(state, load_training_checkpoint(best_path), best_path)
        except (DamagedCheckpointError, FileNotFoundError) as exc:
            problem = f"is damaged ({exc.reason})" if isinstance(exc, DamagedCheckpointError) else "is missing"
            moved_note = f"; moved it to {set_aside(best_path).name}" if best_path.is_file() else ""
            last_path.unlink()
            log(f"warning: {best_path} {problem}{moved_note}; training this job again from its first epoch, "
                "since the selected weights are lost.")
            return None
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # Checked beforehand, so this is rare; the model is half-loaded now, so this process stops.
        moved = set_aside(last_path)
        raise AffbenchError(f"{last_path} could not be resumed from ({exc}); it is now {moved.name}: "
                            "run the same command again to train this job from its first epoch.") from None
    return state


def _match_best(state: dict[str, Any], best: Any, best_path: Path) -> None:
    """Check that ``best.pt`` holds the weights ``state`` selected.

    ``best.pt`` is written before ``last.pt`` within an epoch, so a run killed between the two
    leaves the weights of the interrupted epoch there: they are adopted as the selection (that
    epoch is trained again and replaces them only if it scores higher).
    """
    epoch = best.get("epoch") if isinstance(best, Mapping) else None
    if not isinstance(best, Mapping) or not isinstance(best.get("model"), Mapping):
        raise DamagedCheckpointError(best_path, "it holds no model weights")
    if epoch == state["epoch"] + 2:
        state["best_epoch"], state["best_score"] = epoch, float(best.get("score", float("nan")))
    elif epoch != state["best_epoch"]:
        raise DamagedCheckpointError(best_path, f"it does not hold the weights of epoch {state['best_epoch']}")


def load_model_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a ``best.pt`` (or any ``{"model": state}`` / plain state dict), read as tensors
    only; an unreadable file is a :class:`DamagedCheckpointError`."""
    blob = load_training_checkpoint(path)
    if isinstance(blob, Mapping) and "model" in blob:
        blob = blob["model"]
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise DamagedCheckpointError(path, "it holds no model weights")
    return dict(blob)
