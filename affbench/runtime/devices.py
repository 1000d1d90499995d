"""The torch device a command runs on, from what the user asked (``auto``, ``cpu``, ``cuda``, ``cuda:1``).
"""

from __future__ import annotations


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; a clear error for a missing GPU."""
    import torch

    from affbench.errors import AffbenchError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AffbenchError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine.")
    if device not in {"cpu"} and not device.startswith("cuda"):
        raise AffbenchError(f"Unknown device {device!r}; use auto, cpu or cuda.")
    return device
