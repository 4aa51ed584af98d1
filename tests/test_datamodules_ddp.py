"""Two processes see disjoint shards under DDP (IMDB, IMDB bucketed, WikiText, CIFAR-10; synthetic, tiny).

Every batch carries the samples' positions in their split (IMDB: batch["index"]; WikiText and CIFAR-10 with
`return_index=True`: the last element of the batch tuple), and a tiny LightningModule records them per rank.

How the end of the epoch is accounted for:
  * Training loaders shard themselves (datamodules/resumable.py, EpochBatches: a DistributedSampler, so
    Lightning leaves them alone): each epoch's batches are dealt round-robin, and when their count is odd the
    largest is split in two, so the ranks get the same number of batches, are exactly disjoint and cover
    every sample.
  * Evaluation loaders get Lightning's DistributedSampler (`shards_itself` False, so use_distributed_sampler=True as
    in training/runner.py; drop_last=False), which pads the index list to
    2 * ceil(N / 2) by repeating its first indices, so each rank sees exactly ceil(N / 2) samples, no sample twice
    within a rank, the union is all N, and the ranks share exactly pad = 2 * ceil(N / 2) - N samples (0 or 1).
    The split sizes are chosen odd and even so both cases run.
  * IMDB's evaluation BucketBatchSampler (bucket_by_length=True: `shards_itself`, use_distributed_sampler=False)
    shards whole batches and,
    when the batch count is odd, splits the largest batch in two instead of dropping or repeating: the ranks get
    the same number of batches, are exactly disjoint and cover every sample.

The real run (`Trainer(accelerator="cpu", devices=2, strategy="ddp")`, gloo) runs this file as a script in a
subprocess (Lightning's launcher starts the second process by running it again), all four data modules in one
launch (about 10 s on 2 cores, so it stays in the default suite). The fast in-process test applies Lightning's own sampler injection (`_get_distributed_sampler`,
`_update_dataloader`) to the evaluation loaders for rank 0 and 1 without processes, and hands the others a
stand-in trainer with the world size and rank.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datamodules import CIFAR10DataModule, IMDBDataModule, InpaintingDataModule, WikiTextDataModule  # noqa: E402
from datamodules.text_batches import BucketBatchSampler  # noqa: E402


def make_datamodules(cache_dir: str):
    """name -> datamodule factory. Whether Lightning injects its sampler is the module's own `shards_itself`."""
    return {
        # train 31 (odd: one padded sample), val 10
        "imdb": lambda: IMDBDataModule(data_source="synthetic", tokenizer="byte", max_len=16, synthetic_sizes=(41, 6),
                                       val_fraction=0.25, batch_size=4, cache_dir=cache_dir),
        # 31 samples in batches of 5: 7 batches (odd) -> the largest is split, 4 + 4 batches
        "imdb_bucket": lambda: IMDBDataModule(data_source="synthetic", tokenizer="byte", max_len=16,
                                              synthetic_sizes=(41, 6), val_fraction=0.25, batch_size=5,
                                              bucket_by_length=True, cache_dir=cache_dir),
        "wikitext": lambda: WikiTextDataModule(data_source="synthetic", synthetic_tokens=1000, seq_len=16,
                                               batch_size=8, return_index=True, cache_dir=cache_dir),
        # train 39 (odd), val 11 (odd)
        "cifar": lambda: CIFAR10DataModule(data_source="synthetic", synthetic_sizes=(50, 10), val_size=11,
                                           batch_size=8, augment="none", return_index=True, cache_dir=cache_dir),
    }


def test_shards_itself_says_whether_every_loader_shards_itself(tmp_path):
    """The runner passes use_distributed_sampler=not dm.shards_itself: True only where the evaluation loaders shard
    themselves too (IMDB with bucket_by_length); the tests below check each module's loaders under that setting."""
    got = {name: make().shards_itself for name, make in make_datamodules(str(tmp_path)).items()}
    assert got == {"imdb": False, "imdb_bucket": True, "wikitext": False, "cifar": False}
    assert InpaintingDataModule(data_source="synthetic", cache_dir=str(tmp_path)).shards_itself is False


def batch_index(batch) -> list:
    return (batch["index"] if isinstance(batch, dict) else batch[-1]).tolist()


def check_shards(seen, n: int, padded: bool):
    """seen: [rank0 indices, rank1 indices] over one epoch of a split of n samples."""
    r0, r1 = seen
    assert len(r0) == len(set(r0)) and len(r1) == len(set(r1)), "a rank saw a sample twice"
    assert set(r0) | set(r1) == set(range(n)), "the ranks together do not cover the epoch"
    if padded:  # DistributedSampler: ceil(n/2) each, the padding repeats pad = 2*ceil(n/2) - n samples
        per_rank = math.ceil(n / 2)
        assert len(r0) == len(r1) == per_rank
        assert len(set(r0) & set(r1)) == 2 * per_rank - n
    else:
        assert not set(r0) & set(r1), "the ranks' shards overlap"


# ------------------------------------------------------------------ the real 2-process run (script mode)
def _run_ddp(out: Path):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = {"train": [], "val": []}
            self.batches = {"train": 0, "val": 0}

        def _record(self, split, batch):
            self.seen[split] += batch_index(batch)
            self.batches[split] += 1

        def training_step(self, batch, i):
            self._record("train", batch)
            return (self.w - 1).pow(2).sum()

        def validation_step(self, batch, i):
            self._record("val", batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for name, make in make_datamodules(str(out / "cache")).items():
        dm, model = make(), Recorder()
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, num_sanity_val_steps=0,
                            use_distributed_sampler=not dm.shards_itself, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out))
        trainer.fit(model, datamodule=dm)
        rec = {"rank": trainer.global_rank, "world_size": trainer.world_size, "seen": model.seen,
               "batches": model.batches, "sizes": {"train": len(dm.train_set), "val": len(dm.val_set)}}
        (out / f"{name}-rank{trainer.global_rank}.json").write_text(json.dumps(rec))


def test_two_ddp_processes_see_disjoint_shards(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PL_GLOBAL_SEED": "0"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, make in make_datamodules(str(tmp_path / "cache")).items():
        use_ds = not make().shards_itself
        recs = [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]
        assert [r["rank"] for r in recs] == [0, 1] and all(r["world_size"] == 2 for r in recs)
        for split in ("train", "val"):
            n = recs[0]["sizes"][split]
            check_shards([r["seen"][split] for r in recs], n, padded=use_ds and split == "val")
            assert recs[0]["batches"][split] == recs[1]["batches"][split]  # DDP needs equal step counts


# ------------------------------------------------------------------ fast, in-process: Lightning's own injection
def _shard_with_lightnings_sampler(loader, rank: int, shuffle: bool):
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    mode = RunningStage.TRAINING if shuffle else RunningStage.VALIDATING
    sampler = _get_distributed_sampler(loader, shuffle=shuffle, overfit_batches=0, mode=mode,
                                       num_replicas=2, rank=rank, seed=0)
    return _update_dataloader(loader, sampler, mode=mode)


@pytest.mark.parametrize("name", ["imdb", "imdb_bucket", "wikitext", "cifar"])
def test_distributed_sampler_shards_are_disjoint_in_process(tmp_path, name):
    from types import SimpleNamespace

    make = make_datamodules(str(tmp_path / "cache"))[name]
    use_ds = not make().shards_itself
    for _split, shuffle in (("train", True), ("val", False)):
        seen, n_batches = [], []
        for rank in (0, 1):
            dm = make()
            dm.prepare_data()
            dm.setup("fit")
            if use_ds and not shuffle:
                loader = _shard_with_lightnings_sampler(dm.val_dataloader(), rank, shuffle)
            else:  # training loaders (and the bucketing sampler) shard themselves from the trainer's world size and rank
                dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
                loader = dm.train_dataloader() if shuffle else dm.val_dataloader()
            batches = [batch_index(b) for b in loader]
            seen.append([i for b in batches for i in b])
            n_batches.append(len(batches))
        n = len(dm.train_set if shuffle else dm.val_set)
        check_shards(seen, n, padded=use_ds and not shuffle)
        assert n_batches[0] == n_batches[1]


def test_bucket_sampler_splits_instead_of_dropping():
    lengths = torch.randint(1, 50, (103,), generator=torch.Generator().manual_seed(0))
    for replicas in (2, 3, 4):
        for shuffle in (True, False):
            shards = [list(BucketBatchSampler(lengths, 8, shuffle, seed=1, num_replicas=replicas, rank=r))
                      for r in range(replicas)]
            assert len({len(s) for s in shards}) == 1
            flat = [i for s in shards for b in s for i in b]
            assert sorted(flat) == list(range(103))  # disjoint and complete
            assert all(len(s) == len(BucketBatchSampler(lengths, 8, shuffle, 1, num_replicas=replicas, rank=0))
                       for s in shards)


if __name__ == "__main__":  # the real run: `python tests/test_datamodules_ddp.py OUT_DIR` (launched by the test)
    _run_ddp(Path(sys.argv[1]))
