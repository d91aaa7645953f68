"""Horovod data parallelism: one training function for a single process, ``horovodrun -np N``
and ``horovod.spark.run`` (where Spark executors become the workers).

Gradient reduction, chosen deliberately per parameter kind:

- dense parameters: allreduce (average) of the gradients, Horovod's default;
- embedding tables (sparse gradients): Horovod's sparse path allgathers each rank's (row index,
  value) pairs and averages them; SparseAdam coalesces duplicates. The traffic is proportional
  to the rows a batch touched, not to the table size (200k x 16 per vocab), which densifying
  (``sparse_as_dense``) would send every step. ``training.sparse_as_dense`` switches to the dense
  path where a fabric is fast and tables are small (e.g. NCCL on one GPU node).

Every rank starts from rank 0's parameters and optimiser state (broadcast). SparseAdam's state
is empty at the start and, on resume, every rank loads the same checkpoint file, so it needs no
broadcast (Horovod's optimiser-state broadcast would feed it dense zero gradients, which
SparseAdam rejects).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mtl.models.losses import MultiTaskLoss
from mtl.models.model import MultiTaskRecModel
from mtl.train.trainer import Optimizers

# Set by horovodrun and by horovod.spark.run in every worker process.
HOROVOD_ENV = "HOROVOD_RANK"


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # workers on this host

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_horovod() -> bool:
    return HOROVOD_ENV in os.environ


def init_world() -> World:
    """Horovod's view of the job inside a Horovod-launched process; a world of one otherwise."""
    if not launched_by_horovod():
        return World()
    import horovod.torch as hvd

    if not hvd.is_initialized():  # the horovodrun path initialises before planning
        hvd.init()
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())


def distribute(
    model: MultiTaskRecModel, loss_fn: MultiTaskLoss, optimizers: Optimizers, sparse_as_dense: bool
) -> Optimizers:
    """Broadcast rank 0's parameters and wrap both optimisers in Horovod's DistributedOptimizer."""
    import horovod.torch as hvd

    names = {id(p): n for n, p in model.named_parameters()}
    names.update({id(p): f"loss.{n}" for n, p in loss_fn.named_parameters()})

    def wrap(opt):
        params = [p for group in opt.param_groups for p in group["params"]]
        return hvd.DistributedOptimizer(
            opt, named_parameters=[(names[id(p)], p) for p in params], sparse_as_dense=sparse_as_dense
        )

    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_parameters(loss_fn.state_dict(), root_rank=0)
    dense = wrap(optimizers.dense)
    hvd.broadcast_optimizer_state(dense, root_rank=0)
    sparse = wrap(optimizers.sparse) if optimizers.sparse is not None else None
    return Optimizers(dense, sparse, distributed=True)


def broadcast_object(obj, world: World, name: str):
    """Rank 0's ``obj`` on every rank (the plan that only rank 0 could compute with Spark).

    ``name`` must be the same on every rank: Horovod matches collectives by name, and its
    default is the object's type, which differs between the sender and the receivers."""
    if not world.distributed:
        return obj
    import horovod.torch as hvd

    return hvd.broadcast_object(obj, root_rank=0, name=name)


def allgather_object(obj, world: World, name: str) -> list:
    if not world.distributed:
        return [obj]
    import horovod.torch as hvd

    return hvd.allgather_object(obj, name=name)
