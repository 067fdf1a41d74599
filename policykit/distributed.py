"""Several processes on one job, through HuggingFace accelerate (docs/scale-out.md).

``accelerate launch --num_processes N -m policykit apply FILE`` starts N
copies of the command; each finds the others here (:func:`processes`). What
they share, and how:

- stages that are not data parallel (mining, the shell, the closed form,
  MACE's and ESD's fine-tuning) run once, on the main process; their outputs
  are broadcast (:meth:`Processes.broadcast`);
- noise alignment is data parallel: every process draws the same global
  batch, computes the loss on its slice, and the gradients are summed
  (:meth:`Processes.sum_gradients`), which is the one-process gradient of the
  same batch up to the order of float sums;
- the audit's images (and the training latents) are split by whole batches
  (:meth:`Processes.share`) and gathered back in order; every image has its
  own seed and every batch is the same batch at any N, so the images are the
  same images;
- only the main process writes: the stage cache, the artifact, its
  signature and the reports. The others write nothing.

With one process (no launcher) every method is a no-op and accelerate is not
imported.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class Processes:
    """This process's place among the job's processes (one, without a launcher)."""

    rank: int = 0
    count: int = 1
    #: Work done here, by kind (``"images"``, ``"latents"``): what :meth:`share` handed this process.
    work: dict[str, int] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        """True on the process that writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1

    def broadcast(self, value: T) -> T:
        """The main process's ``value``, on every process (any picklable object, tensors included)."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value if self.main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.count
        dist.all_gather_object(out, value)
        return out

    def share(self, batches: Sequence[T], kind: str, size: Callable[[T], int] = lambda b: 1) -> list[tuple[int, T]]:
        """This process's part of ``batches``: ``(index, batch)`` for every ``count``-th one from ``rank``;
        ``work[kind]`` counts them (``size`` of each)."""
        mine = [(i, b) for i, b in enumerate(batches) if i % self.count == self.rank]
        self.work[kind] = self.work.get(kind, 0) + sum(size(b) for _, b in mine)
        return mine

    def map_batches(self, batches: Sequence[T], fn: Callable[[T], Any], kind: str,
                    size: Callable[[T], int] = lambda b: 1) -> list[Any]:
        """``[fn(b) for b in batches]`` with the batches shared out and the results gathered in order."""
        results = {i: fn(b) for i, b in self.share(batches, kind, size)}
        if not self.distributed:
            return [results[i] for i in range(len(batches))]
        merged: dict[int, Any] = {}
        for part in self.gather(results):
            merged.update(part)
        return [merged[i] for i in range(len(batches))]

    def sum_gradients(self, parameters: Sequence[Any]) -> None:
        """Sum every parameter's gradient over the processes (each has computed its share of the mean)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        for p in parameters:  # a process whose share was empty has no gradients: it adds zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in parameters]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Inside the block this process works as if it were the only one (a stage the main process runs
        by itself: its collectives would wait for processes that are not running it)."""
        count = self.count
        self.count = 1
        try:
            yield
        finally:
            self.count = count

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def slice(self, n: int) -> slice:
        """This process's contiguous part of a global batch of ``n`` (the first ``n % count`` get one more)."""
        base, extra = divmod(n, self.count)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


_SINGLE = Processes()
_CURRENT: Processes | None = None


def launched() -> bool:
    """True when a launcher (accelerate, torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def processes(device: str | None = None) -> Processes:
    """The job's processes: joins the others on the first call under a launcher (gloo on the CPU)."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if not launched():
        return _SINGLE
    import torch
    from accelerate import PartialState

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    _CURRENT = Processes(rank=int(state.process_index), count=int(state.num_processes))
    return _CURRENT


def current() -> Processes:
    """The processes joined so far (one, before :func:`processes` is called or without a launcher)."""
    return _CURRENT or _SINGLE
