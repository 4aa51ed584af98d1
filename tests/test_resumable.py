"""datamodules/resumable.py on its own: epochs in order whatever the number of workers (a DataLoader with
workers calls iter() on its sampler twice as it starts), a resume point that starts the next epoch where it
says, the position a checkpoint would record, and shards that are disjoint and equal in count."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.resumable import EpochBatches, KeyedDataset, shuffled_batches, unkey


class Numbers(Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return i


def batch_of(items, key):  # a batch that also says where it came from (epoch, position) and a random draw
    return (key.epoch, key.position, tuple(items), torch.rand(1, generator=key.generator(0, "t")).item())


def loader(batches, workers):
    return DataLoader(KeyedDataset(Numbers(), batch_of), sampler=batches, batch_size=None, collate_fn=unkey,
                      num_workers=workers, persistent_workers=workers > 0)


def plan(epoch):
    return shuffled_batches(20, 6, seed=3, epoch=epoch)


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_in_order_with_any_number_of_workers(workers):
    reference = [list(loader(EpochBatches(plan), 0))]  # epoch 0 without workers
    batches = EpochBatches(plan)
    dl = loader(batches, workers)
    epochs = [list(dl) for _ in range(3)]
    assert epochs[0] == reference[0]  # epoch 0 first: the discarded iter() of the workers' start advances nothing
    assert [b[0] for e in epochs for b in e] == [0] * 4 + [1] * 4 + [2] * 4
    assert sorted(i for b in epochs[1] for i in b[2]) == list(range(20))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_starts_where_it_says(workers):
    whole = list(loader(EpochBatches(plan), 0))
    batches = EpochBatches(plan)
    batches.resume(0, 2)
    assert list(loader(batches, workers)) == whole[2:]
    assert batches.position(done=2, per_epoch=4) == {"epoch": 0, "done": 2}
    assert batches.position(done=4, per_epoch=4) == {"epoch": 1, "done": 0}  # a finished epoch: the next one


def test_shards_are_disjoint_and_equal_in_count():
    shards = [list(EpochBatches(plan, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for key in s for i in key.indices]
    assert sorted(seen) == list(range(20))
