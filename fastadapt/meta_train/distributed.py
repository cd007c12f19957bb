"""Data-parallel meta-training with torch.distributed, for runs launched by ``torchrun``.

Every process (rank) computes the meta-gradient of its contiguous share of the global meta-batch
(rank r of W takes tasks j = r*B/W .. (r+1)*B/W - 1 of each iteration), the shares are averaged with
one all-reduce (weighted by share size, together with the loss/accuracy and a "did I fail" flag), and
every rank applies the same optimiser step, so the parameters stay identical and the result equals a
single-process step over the same B tasks. CUDA runs use NCCL (device cuda:LOCAL_RANK), CPU runs gloo.

Outside torchrun (no WORLD_SIZE > 1 in the environment) ``setup`` returns a single-process Job whose
methods do nothing, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import FastadaptError

DEFAULT_TIMEOUT_S = 300.0


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun); valid before and after ``setup``."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Job:
    world_size: int = 1
    rank: int = 0
    device: torch.device | None = None  # the training device when distributed; None: the config decides
    timeout_s: float = DEFAULT_TIMEOUT_S
    owns_group: bool = False  # created by setup (so destroyed by teardown), not by the caller

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_config(self, meta_batch: int, pretrain_epochs: int) -> None:
        if not self.active:
            return
        if meta_batch % self.world_size:
            up = -(-meta_batch // self.world_size) * self.world_size
            raise FastadaptError(f"--meta-batch {meta_batch} is the global meta-batch (tasks per update over all "
                                 f"processes) and must be divisible by the {self.world_size} processes; use e.g. "
                                 f"--meta-batch {up}")
        if pretrain_epochs:
            raise FastadaptError("--pretrain-epochs runs in one process: pre-train first (fastadapt train "
                                 "--pretrain-epochs E --iterations 0 --out PRE), then launch torchrun with --init-from PRE")

    def share(self, meta_batch: int) -> range:
        """The task positions j of each iteration that this rank computes."""
        per = meta_batch // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)

    def _all_reduce(self, tensor: torch.Tensor, what: str, op=None) -> None:
        try:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        except RuntimeError as exc:  # gloo timeout or a peer that went away (DistBackendError is one)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FastadaptError(f"lost the other training processes during {what} ({first}); "
                                 f"one of them failed, or was more than --dist-timeout {self.timeout_s:g} s behind "
                                 f"(the others wait while rank 0 validates: raise --dist-timeout or lower --val-tasks)"
                                 ) from None

    def check(self, error: BaseException | None, where: str) -> None:
        """Stop every rank if any failed: the failing rank re-raises its error, the others a one-line one."""
        failed = int(error is not None)
        if self.active:
            flag = torch.tensor([float(failed)], device=self.device)
            self._all_reduce(flag, where)
            failed = int(flag.item())
        if error is not None:
            raise error
        if failed:
            raise FastadaptError(f"stopping at {where}: {failed} other training process(es) failed (see their error)")

    def same(self, value: int, what: str) -> None:
        """Check that every rank holds the same integer (e.g. the iteration it resumes from)."""
        if not self.active:
            return
        t = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        self._all_reduce(t, what, dist.ReduceOp.MAX)
        if int(t[0].item()) != -int(t[1].item()):
            raise FastadaptError(f"the processes disagree on {what} ({-int(t[1].item())}..{int(t[0].item())}): "
                                 f"every machine must see the same --out folder (a shared filesystem) to --resume")

    def any(self, flag: bool, what: str) -> bool:
        """True on every rank when ``flag`` is True on any rank (e.g. rank 0 decided to stop)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        self._all_reduce(t, what, dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, params: dict) -> None:
        """Copy rank 0's parameters into every rank's (in place)."""
        if not self.active:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
            try:
                dist.broadcast(flat, src=0)
            except RuntimeError as exc:
                raise FastadaptError(f"broadcasting the initial parameters failed ({exc})") from None
            offset = 0
            for p in params.values():
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def average(self, grads: dict | None, loss: float, acc: float, tasks: int, error: BaseException | None,
                like: dict, where: str) -> tuple:
        """Average (grads, loss, acc) over all ranks, weighting each rank by its number of ``tasks``.

        A rank whose own step failed passes ``error`` (and grads None); every rank then stops.
        ``like``: the meta-parameters, whose names and shapes the gradients follow.
        """
        if not self.active:
            self.check(error, where)
            return grads, loss, acc
        if error is not None:
            grads, loss, acc, tasks = {k: torch.zeros_like(v) for k, v in like.items()}, 0.0, 0.0, 0
        stats = torch.tensor([loss * tasks, acc * tasks, tasks, float(error is not None)],
                             dtype=next(iter(like.values())).dtype, device=self.device)
        flat = torch.cat([grads[k].detach().reshape(-1) * tasks for k in like] + [stats])
        self._all_reduce(flat, where)
        loss_sum, acc_sum, total, failed = flat[-4:].tolist()
        if error is not None:
            raise error
        if failed:
            raise FastadaptError(f"stopping at {where}: {int(failed)} other training process(es) failed "
                                 f"(see their error)")
        out, offset = {}, 0
        for k, v in like.items():
            out[k] = (flat[offset:offset + v.numel()] / total).view_as(v)
            offset += v.numel()
        return out, loss_sum / total, acc_sum / total

    def teardown(self, clean: bool) -> None:
        """Destroy the process group setup made; after a clean run first wait for rank 0 to finish writing."""
        if not self.owns_group or not dist.is_initialized():
            return
        try:
            if clean:
                dist.barrier()
        except RuntimeError as exc:
            raise FastadaptError(f"the other processes did not finish ({exc})") from None
        finally:
            dist.destroy_process_group()


def setup(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Job:
    """Join the torchrun job this process belongs to (a single-process Job outside torchrun).

    ``device``: the --device flag; unless it is cpu, each rank trains on cuda:LOCAL_RANK when CUDA is
    available (NCCL), otherwise on the CPU (gloo). A process group the caller already initialised is used
    as it is and left to the caller.
    """
    if not timeout_s > 0:
        raise FastadaptError(f"--dist-timeout must be positive, got {timeout_s}")
    if dist.is_available() and dist.is_initialized():
        cuda = dist.get_backend() == "nccl"
        return Job(dist.get_world_size(), dist.get_rank(),
                   torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"), timeout_s)
    world = env_world_size()
    if world <= 1:
        return Job(timeout_s=timeout_s)
    if not dist.is_available():
        raise FastadaptError("this torch build has no torch.distributed; install a standard torch to use torchrun")
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise FastadaptError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible: "
                                 f"launch at most --nproc-per-node {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise FastadaptError(f"could not join the torchrun job ({exc})") from None
    return Job(world, rank, torch.device("cuda", local) if cuda else torch.device("cpu"), timeout_s, owns_group=True)
