"""One model on several processes: torchrun's environment, DistributedDataParallel, per-rank data.

``torchrun --nproc_per_node=N affbench run-benchmark ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set; :meth:`Distribution.from_environment` reads them.
Every process trains the same job at the same time:

* each takes a disjoint, equal slice of every batch of the one-process order
  (:class:`RankBatches`), so the suite's ``batch_size`` stays the global batch of the papers, the
  number of steps and the learning-rate schedule are those of one process, and DDP's gradient
  average is the gradient of the whole batch;
* for validation and test each predicts a contiguous share of the rows (:meth:`Distribution.share`)
  and the outputs are gathered (:meth:`Distribution.gather`) before scoring: every row is scored
  once, none twice (nothing is padded);
* only rank 0 writes files; what a run decides from files (skip a job, resume) rank 0 decides and
  sends to the others (:meth:`Distribution.decide`).

A single process is ``SINGLE``: every method is then a no-op, and nothing here imports
``torch.distributed`` state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from affbench.errors import AffbenchError
from affbench.runtime.processes import exit_with_parent

if TYPE_CHECKING:
    from affbench.data.loader import RowGroupBatchSampler

T = TypeVar("T")

#: Room for an output's trailing shape in the size message of :meth:`Distribution.gather`.
_MAX_DIMS = 6


@dataclass(frozen=True)
class Distribution:
    """Where this process stands among the processes that train one model together."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Distribution:
        """The torchrun variables ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; one process without them."""
        environ = os.environ if environ is None else environ
        try:
            world = int(environ.get("WORLD_SIZE") or 1)
            rank = int(environ.get("RANK") or 0)
            local = int(environ.get("LOCAL_RANK") or 0)
        except ValueError:
            raise AffbenchError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them).") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise AffbenchError(f"RANK {rank} does not fit WORLD_SIZE {world}; start the processes with torchrun.")
        return cls(world, rank, local)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    # -- setting up

    def device(self, requested: str) -> str:
        """This process's device: ``cuda:LOCAL_RANK`` under torchrun when ``requested`` is a GPU."""
        if not self.active or not requested.startswith("cuda"):
            return requested
        if self.local_rank >= torch.cuda.device_count():
            raise AffbenchError(f"LOCAL_RANK {self.local_rank} has no GPU: this machine has "
                                f"{torch.cuda.device_count()}; start at most that many processes per node.")
        return f"cuda:{self.local_rank}"

    def start(self, device: str) -> None:
        """Join the process group (NCCL for GPUs, gloo for the CPU) unless it is joined already."""
        import torch.distributed as dist

        if not self.active or dist.is_initialized():
            return
        _stop_with_launcher()
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
            dist.init_process_group("nccl", device_id=torch.device(device))
        else:
            dist.init_process_group("gloo")

    def stop(self) -> None:
        """Leave the process group (torchrun warns about a group left open)."""
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def per_rank_batch(self, global_batch: int, what: str = "batch_size") -> int:
        """``global_batch / world_size``; one clear sentence when it does not divide."""
        if global_batch % self.world_size:
            raise AffbenchError(
                f"The {what} {global_batch} does not divide among {self.world_size} processes; start a number of "
                f"processes that divides it (it is the global batch: each process takes an equal share).")
        return global_batch // self.world_size

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (which starts every rank from rank 0's weights)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Unused parameters: a head whose task has no annotated row in this rank's slice.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)

    def seed_rank(self, seed: int) -> None:
        """Give this rank its own stream of the global random generator, from ``seed`` and the rank.

        Call it once the model is wrapped (DDP has copied rank 0's weights to every rank, so the
        initialisation does not depend on it). Dropout draws its masks from that generator: with
        every rank seeded alike, each rank would drop the same units at the same positions of its
        slice, so the global batch would not see independent masks as one process's would.
        """
        if self.active:
            torch.manual_seed(seed + 7919 * self.rank)

    # -- data

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of ``rows`` (shares differ by at most one row)."""
        if not self.active:
            return rows
        return np.array_split(np.asarray(rows), self.world_size)[self.rank]

    # -- talking to the other ranks

    def _tensor_device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def decide(self, choose: Callable[[], T]) -> T:
        """``choose()`` on rank 0, its result (plain values) on every rank.

        An :class:`AffbenchError` that ``choose`` raises on rank 0 is raised on every rank, with
        the same sentence, so that all of them stop instead of waiting for each other.
        """
        if not self.active:
            return choose()
        import torch.distributed as dist

        box: list[Any] = [None]
        error = None
        if self.is_main:
            try:
                box = [("value", choose())]
            except AffbenchError as exc:
                error, box = exc, [("error", str(exc))]
        dist.broadcast_object_list(box, src=0, device=self._tensor_device())
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "error":
            raise AffbenchError(value)
        return value

    def sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, "sum")

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, "max")

    def _reduce(self, values: Sequence[float], op: str) -> list[float]:
        if not self.active:
            return [float(v) for v in values]
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._tensor_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor.cpu().tolist()

    def gather(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray], *, keys: Sequence[str],
               expected: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every rank's ``outputs`` (one row each per entry of its ``rows``), in rank order.

        Ranks with different row counts are padded for the transfer and cut back after it, so no
        row is counted twice. With ``expected`` (all rows, in the order the shares were cut from)
        the gathered row ids must be exactly those, or this raises: a row scored twice or not at
        all would change every metric silently.
        """
        if not self.active:
            return dict(outputs)
        gathered_rows = self._gather_array(np.asarray(rows, dtype=np.int64))
        if expected is not None and not np.array_equal(gathered_rows, np.asarray(expected, dtype=np.int64)):
            raise RuntimeError("the rows gathered from the ranks are not the rows that were shared out")
        return {key: self._gather_array(outputs.get(key)) for key in keys}

    def _gather_array(self, array: np.ndarray | None) -> np.ndarray:
        """Concatenate one array (first axis: rows) over the ranks; a rank without rows sends None."""
        import torch.distributed as dist

        device = self._tensor_device()
        # What each rank holds: row count, number of trailing axes, trailing shape, a dtype code.
        header = np.zeros(3 + _MAX_DIMS, dtype=np.int64)
        if array is not None:
            if array.ndim - 1 > _MAX_DIMS:
                raise ValueError(f"outputs with more than {_MAX_DIMS + 1} axes cannot be gathered")
            header[0], header[1] = len(array), array.ndim - 1
            header[2 : 2 + array.ndim - 1] = array.shape[1:]
            header[-1] = 1 if array.dtype == np.int64 else 2
        header_tensors = [torch.zeros(len(header), dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(header_tensors, torch.from_numpy(header).to(device))
        headers = [h.cpu().numpy() for h in header_tensors]
        described = [h for h in headers if h[-1]]
        if not described:
            raise ValueError("no rank has this output")
        trailing = tuple(int(d) for d in described[0][2 : 2 + described[0][1]])
        dtype = torch.int64 if described[0][-1] == 1 else torch.float32
        counts = [int(h[0]) for h in headers]
        longest = max(max(counts), 1)
        padded = torch.zeros((longest, *trailing), dtype=dtype, device=device)
        if array is not None and len(array):
            padded[: len(array)] = torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded)
        return np.concatenate([p[:n].cpu().numpy() for p, n in zip(pieces, counts)])


#: One process, no torchrun.
SINGLE = Distribution()


def _stop_with_launcher() -> None:
    """End this rank soon after the process that started it (torchrun) is gone.

    torchrun starts each rank in a session of its own, so a torchrun killed with SIGKILL (or by
    a lost node) would leave its ranks training on and writing into the run folder that the next
    run resumes from (the next run resumes from the last finished epoch instead).
    """
    exit_with_parent(os.getppid(), name="stop-with-launcher")


class RankBatches(torch.utils.data.Sampler):
    """This rank's slice of every batch of ``batches`` (a batch sampler yielding lists).

    All ranks draw the same batches (same seed, same epoch), and rank ``r`` keeps the ``r``-th of
    ``world_size`` consecutive, equal slices of each: the slices are disjoint, together they are the
    batch, and every rank takes the same number of steps. A batch with fewer entries than ranks
    (only when there are fewer rows than one batch) is repeated so that no rank gets an empty one.
    """

    def __init__(self, batches: RowGroupBatchSampler, distribution: Distribution):
        self.batches, self.distribution = batches, distribution

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Any]]:
        world, rank = self.distribution.world_size, self.distribution.rank
        for batch in self.batches:
            if len(batch) < world:
                batch = (list(batch) * math.ceil(world / max(len(batch), 1)))[:world]
            bounds = np.linspace(0, len(batch), world + 1).round().astype(int)
            yield list(batch[bounds[rank] : bounds[rank + 1]])
