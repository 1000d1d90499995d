"""The torch device a command runs on, from what the user asked (``auto``, ``cpu``, ``cuda``, ``cuda:1``),
and how many worker processes keep the machine busy (``--workers auto``).
"""

from __future__ import annotations

import os
import sys

#: Device nodes of the GPU drivers PyTorch's CUDA (and ROCm) builds use on Linux: NVIDIA's, WSL2's
#: and AMD's. Where none exists, no GPU can be usable.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def gpu_impossible() -> bool:
    """Whether this machine surely has no usable GPU: Linux without any GPU driver's device node.
    Then ``auto`` needs no PyTorch import (a second or two, paid by every prepare command) to say
    ``cpu``; elsewhere PyTorch decides."""
    return sys.platform.startswith("linux") and not any(os.path.exists(node) for node in GPU_DEVICE_NODES)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; a clear error for a missing GPU."""
    from affbench.errors import AffbenchError

    if device == "cpu" or (device == "auto" and gpu_impossible()):
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AffbenchError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine.")
    if device not in {"cpu"} and not device.startswith("cuda"):
        raise AffbenchError(f"Unknown device {device!r}; use auto, cpu or cuda.")
    return device


#: GPU memory one prepare worker process may hold: its CUDA context (about 0.3-0.5 GiB) and MTCNN's
#: activations on a batch of frames, with room to spare.
GPU_BYTES_PER_WORKER = 1 << 30


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which a batch scheduler or
    ``taskset`` narrows; all cores where the platform has no such mask)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | str = "auto", device: str = "cpu") -> int:
    """The number of worker processes a prepare run uses.

    Parameters
    ----------
    workers : int or "auto"
        A number (at least 1) is used as it is. ``"auto"`` is one worker per available CPU core
        (each worker runs one unit with one PyTorch thread); on a CUDA ``device``, no more workers
        than the GPU's free memory holds at :data:`GPU_BYTES_PER_WORKER` each.
    device : str
        The resolved device (``cpu``, ``cuda``, ``cuda:N``) the workers' detectors run on.

    Returns
    -------
    int

    Examples
    --------
    >>> resolve_workers(3)
    3
    >>> resolve_workers("auto") == available_cores()
    True
    """
    from affbench.errors import AffbenchError

    if workers != "auto":
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise AffbenchError(f"--workers must be a whole number of at least 1 or 'auto', not {workers!r}.")
        return workers
    count = available_cores()
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        count = min(count, max(1, int(free // GPU_BYTES_PER_WORKER)))
    return count
