"""A small FSDP2 run (Lightning's ModelParallelStrategy, 2 gloo processes on the CPU) with
GradientNormCallback, for tests/test_grad_norm_fsdp.py. Usage: python tests/fsdp_run.py OUT_DIR"""

from __future__ import annotations

import sys

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.callbacks import GradientNormCallback

STEPS, BATCH = 3, 8  # per rank: the global batch is 16


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    # Odd sizes: the shards of 2 ranks are uneven (FSDP2 pads them).
    return nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 9), nn.Tanh(), nn.Linear(9, 3))


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 7, generator=g), torch.randint(0, 3, (64,), generator=g))


class Sharded(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        # Each rank's batches, so that the test's reference sees the same global batches.
        path = f"{self.trainer.default_root_dir}/batch-{self.global_step}-{self.global_rank}.pt"
        torch.save((x, y), path)
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


if __name__ == "__main__":
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=sys.argv[1],
        callbacks=[GradientNormCallback(log_every_n_steps=1)],
    )
    trainer.fit(Sharded(), DataLoader(make_data(), batch_size=BATCH, shuffle=False))
