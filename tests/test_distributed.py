"""Two-process DDP on CPU (gloo): sharding, per-rank masks and loss scale."""

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS

import scexceiver

TINY = {"n_latents": 4, "dim": 16, "n_layers": 1, "ff_dim": 32}
N_CELLS = 200


class RecordShards(Callback):
    """Write, per rank and epoch, the cells each rank trained on and a mask draw."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.cells, self.draws = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.cells.append(batch[REGISTRY_KEYS.LABELS_KEY].view(-1).cpu().numpy())
        generator = pl_module.training_generator(trainer.global_step, trainer.global_rank)
        self.draws.append(torch.rand(8, generator=generator).numpy())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        stem = f"{self.out}/rank{trainer.global_rank}_epoch{trainer.current_epoch}"
        np.save(f"{stem}_cells.npy", np.concatenate(self.cells))
        np.save(f"{stem}_draws.npy", np.stack(self.draws))


@pytest.fixture(scope="module")
def cells(pbmc_small):
    adata = pbmc_small[:N_CELLS].copy()
    # labels = cell positions (zero-padded so category order is position order)
    adata.obs["cell"] = pd.Categorical([f"{i:04d}" for i in range(adata.n_obs)])
    scexceiver.ExceiverModel.setup_anndata(adata, labels_key="cell")
    return adata


def _train(adata, **kwargs):
    scvi.settings.seed = 0
    model = scexceiver.ExceiverModel(adata, **TINY)
    model.train(
        max_epochs=2,
        accelerator="cpu",
        batch_size=40,
        train_size=0.8,
        early_stopping=False,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
        **kwargs,
    )
    return model


def _losses(model):
    return np.array([float(v) for v in model.history["validation_loss"].to_numpy().ravel()])


def test_ddp_ranks_train_on_disjoint_shards_with_distinct_masks(cells, tmp_path):
    model = _train(
        cells,
        devices=2,
        strategy="ddp_spawn",
        callbacks=[RecordShards(str(tmp_path))],
        checkpoint_dir=tmp_path / "ckpt",
    )
    # rank 0 alone wrote the checkpoints
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch=0-step=2.ckpt",
        "epoch=1-step=4.ckpt",
        "last.ckpt",
    ]
    train_idx = np.sort(model.train_indices)
    assert train_idx.size == 160
    for epoch in (0, 1):
        shards = [np.load(tmp_path / f"rank{r}_epoch{epoch}_cells.npy") for r in (0, 1)]
        assert [s.size for s in shards] == [80, 80]
        assert np.intersect1d(shards[0], shards[1]).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate(shards)), train_idx)
        draws = [np.load(tmp_path / f"rank{r}_epoch{epoch}_draws.npy") for r in (0, 1)]
        assert draws[0].shape == (2, 8)
        assert not np.allclose(draws[0], draws[1])
    # every epoch reshuffles the shards
    assert not np.array_equal(
        np.load(tmp_path / "rank0_epoch0_cells.npy"), np.load(tmp_path / "rank0_epoch1_cells.npy")
    )

    single = _train(cells, devices=1)
    ddp_loss = _losses(model)
    single_loss = _losses(single)
    assert ddp_loss.shape == single_loss.shape == (2,)
    assert np.all(np.isfinite(ddp_loss))
    # same data per optimiser step count halves, so compare scale, not values
    np.testing.assert_allclose(ddp_loss, single_loss, rtol=0.25)


@pytest.fixture(scope="module")
def two_batch_cells(shifted):
    adata = shifted[0][:N_CELLS].copy()
    adata.obs["cell"] = pd.Categorical([f"{i:04d}" for i in range(adata.n_obs)])
    scexceiver.ExceiverModel.setup_anndata(adata, labels_key="cell", batch_key="batch")
    return adata


def test_ddp_ranks_train_on_their_own_input_neighbourhoods(two_batch_cells, tmp_path):
    """The default with two batches (``neighbour_preservation=3``) trains under DDP."""
    model = _train(
        two_batch_cells, devices=2, strategy="ddp_spawn", callbacks=[RecordShards(str(tmp_path))]
    )
    assert model.module.neighbour_preservation == 3
    train_idx = np.asarray(model.train_indices)
    found = model._input_neighbourhoods(train_idx, chunked=False)["neighbourhoods"]
    neighbours = train_idx[found]  # rows of adata
    position = {cell: i for i, cell in enumerate(train_idx)}
    for epoch in (0, 1):
        shards = [np.load(tmp_path / f"rank{r}_epoch{epoch}_cells.npy") for r in (0, 1)]
        # 160 training cells: 80 per rank, in 20 neighbourhoods of 4
        assert [s.size for s in shards] == [80, 80]
        groups = np.concatenate(shards).reshape(40, 4)
        assert np.unique(groups[:, 0]).size == 40  # no cell visited twice
        for visited, *rest in groups:
            assert set(rest) <= set(neighbours[position[visited]]), (visited, rest)
    assert np.all(np.isfinite(_losses(model)))


def test_ddp_ranks_read_their_own_blocks_in_window_neighbourhoods(two_batch_cells, tmp_path):
    """Chunked reading with the neighbour loss: neighbourhoods within each rank's windows."""
    model = _train(
        two_batch_cells,
        devices=2,
        strategy="ddp_spawn",
        chunked=True,
        datasplitter_kwargs={"chunk_size": 20, "window_chunks": 2},
        callbacks=[RecordShards(str(tmp_path))],
    )
    for epoch in (0, 1):
        shards = [np.load(tmp_path / f"rank{r}_epoch{epoch}_cells.npy") for r in (0, 1)]
        assert [s.size for s in shards] == [80, 80]
        assert np.isin(np.concatenate(shards), model.train_indices).all()
        # (chunked reads sort each minibatch's rows, so its neighbourhoods are not in
        # order here; the sampler's own tests check them) a minibatch of 40 comes from
        # the 2 blocks of 20 rows of its window, or 4 where it straddles two windows
        batches = np.concatenate(shards).reshape(4, 40)
        assert max(np.unique(batch // 20).size for batch in batches) <= 4
        # each rank reads its own blocks: at most the block at the cut is shared
        blocks = [set(shard // 20) for shard in shards]
        assert len(blocks[0] & blocks[1]) <= 1
    assert np.all(np.isfinite(_losses(model)))
