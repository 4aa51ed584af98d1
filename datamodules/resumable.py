"""Training batches that a run can resume in the middle of an epoch, exactly (docs/training.md, "Resuming").

A batch is a pure function of (seed, epoch, position): its order from a generator seeded with (seed,
epoch), its augmentation from one seeded with (seed, epoch, position). So the DataModule's state only
needs the position, and the batches do not depend on the number of workers.

    loader = self.resumable_loader(dataset, plan=lambda epoch: batches_of(epoch), make_batch=collate)"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def mixed_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints and strings: unrelated streams for neighbouring inputs."""
    blob = repr(parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


def seeded(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(mixed_seed(*parts))


@dataclass(frozen=True)
class BatchKey:
    epoch: int
    position: int  # in the epoch, counted on this process's shard
    indices: Tuple[int, ...]

    def generator(self, seed: int, salt: str = "") -> torch.Generator:
        """This batch's own random stream."""
        return seeded(seed, salt, "batch", self.epoch, self.position)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> List[List[int]]:
    """range(n) in the order of (seed, epoch), cut into batches."""
    order = torch.randperm(n, generator=seeded(seed, "order", epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) == batch_size] if drop_last else batches


def even_batches(batches: List[List[int]], replicas: int) -> List[List[int]]:
    """Make the batch count a multiple of `replicas` by splitting the largest batches in two (in place of
    the batch: its first half, then its second); repeat leading batches only when no batch can be split.
    Every process then gets the same number of batches, and the processes' samples stay disjoint."""
    batches = [list(b) for b in batches]
    while len(batches) % replicas:
        k = max(range(len(batches)), key=lambda i: len(batches[i])) if batches else -1
        if k < 0 or len(batches[k]) < 2:
            need = replicas - len(batches) % replicas
            batches += [list(b) for b in (batches * need)[:need]] if batches else []
            break
        b = batches[k]
        batches[k : k + 1] = [b[: len(b) // 2], b[len(b) // 2 :]]
    return batches


class EpochBatches(DistributedSampler):
    """BatchKeys of epoch 0, 1, 2, ... (one epoch per `iter`), each epoch's batches given by `plan(epoch)`
    and sharded across `num_replicas` processes. `resume(epoch, done)` makes the next `iter` start at batch
    `done` of `epoch`. `set_epoch` (Lightning calls it) is ignored: Lightning's epoch counter and the data's
    part ways when a run that stopped at --max-steps is continued, and the data must follow its own."""

    def __init__(self, plan: Callable[[int], List[List[int]]], num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ wants a data set and a process group; this one needs neither, and is a
        # DistributedSampler only because it shards itself (so Lightning does not wrap it in another)
        Sampler.__init__(self)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank {rank} of {num_replicas}")
        self.plan, self.num_replicas, self.rank = plan, num_replicas, rank
        self.epoch: Optional[int] = None  # the epoch of the last `iter`
        self._next: Tuple[int, int] = (0, 0)
        self._length: Optional[int] = None

    def resume(self, epoch: int, done: int) -> None:
        self._next = (int(epoch), int(done))

    def set_epoch(self, epoch: int) -> None:
        pass

    def shard(self, epoch: int) -> List[List[int]]:
        batches = self.plan(epoch)
        if self.num_replicas > 1:
            batches = even_batches(batches, self.num_replicas)[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[BatchKey]:
        # a generator: the epoch advances when its first batch is drawn, not when iter() is called, because a
        # DataLoader with workers calls iter() twice as it starts and draws from the second iterator only
        epoch, done = self._next
        self._next, self.epoch = (epoch + 1, 0), epoch
        batches = self.shard(epoch)
        for i in range(done, len(batches)):
            yield BatchKey(epoch, i, tuple(batches[i]))

    def __len__(self) -> int:
        if self._length is None:  # the same for every epoch: the plans only reorder
            self._length = len(self.shard(0))
        return self._length

    def position(self, done: int, per_epoch: float) -> Dict[str, int]:
        """Where a resumed run starts, given how many batches of the current epoch the training loop
        finished and how many it takes per epoch (Lightning's limit_train_batches may take fewer)."""
        if self.epoch is None:  # nothing iterated yet: where the first epoch will start
            return {"epoch": self._next[0], "done": self._next[1]}
        if done >= min(per_epoch, len(self)):
            return {"epoch": self.epoch + 1, "done": 0}
        return {"epoch": self.epoch, "done": int(done)}


class KeyedDataset(Dataset):
    """BatchKey -> the finished batch: `make_batch(items, key)` over the data set's items at key.indices."""

    def __init__(self, dataset: Dataset, make_batch: Callable[[List[Any], BatchKey], Any]):
        self.dataset, self.make_batch = dataset, make_batch

    def __getitem__(self, key: BatchKey):
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(list(key.indices)) if getitems else [self.dataset[i] for i in key.indices]
        return self.make_batch(items, key)

    def __len__(self) -> int:
        return len(self.dataset)


def unkey(batch):
    """collate_fn of a KeyedDataset loader: the batch is already made."""
    return batch


class ResumableTraining:
    """Mixin for a LightningDataModule whose training loader is built by `resumable_loader`: saves the
    position in Lightning checkpoints and starts the next training loader there after a restore."""

    _train_batches: Optional[EpochBatches] = None
    _resume_at: Optional[Dict[str, int]] = None

    def resumable_loader(self, dataset: Dataset, plan: Callable[[int], List[List[int]]],
                         make_batch: Callable[[List[Any], BatchKey], Any], **loader_kwargs):
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        batches = EpochBatches(plan, num_replicas=replicas, rank=rank)
        if self._resume_at is not None:
            batches.resume(self._resume_at["epoch"], self._resume_at["done"])
            self._resume_at = None
        self._train_batches = batches
        return DataLoader(KeyedDataset(dataset, make_batch), sampler=batches, batch_size=None, collate_fn=unkey,
                          **loader_kwargs)

    def shuffled_loader(self, dataset: Dataset, batch_size: int, seed: int,
                        make_batch: Callable[[List[Any], BatchKey], Any], **loader_kwargs) -> DataLoader:
        """Batches of `batch_size` in a new order each epoch, drawn from (seed, epoch)."""
        plan = functools.partial(shuffled_batches, len(dataset), batch_size, seed)
        return self.resumable_loader(dataset, plan, make_batch, **loader_kwargs)

    def training_position(self) -> Optional[Dict[str, int]]:
        """Where a run resumed from now would start (None outside of fitting)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or self._train_batches is None or trainer.state.fn != "fit":
            return self._resume_at
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return self._train_batches.position(done, trainer.num_training_batches)

    def state_dict(self) -> Dict[str, Any]:
        position = self.training_position()
        return {"position": position} if position is not None else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        position = state_dict.get("position")
        if isinstance(position, dict):
            self._resume_at = {"epoch": int(position["epoch"]), "done": int(position["done"])}
