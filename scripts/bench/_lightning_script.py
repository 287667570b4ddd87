"""The default run written by hand with Lightning: the whole-process baseline of ``process``.

The same work as ``python -m gradwatch.train`` with its defaults (the data and network of
``_torch_script.py``, fused Adam at lr 1e-3, 20 epochs with validation, then the test split)
with a TensorBoard logger and Lightning's default checkpoint, but none of gradwatch's
monitoring, run files or report.

    python scripts/bench/_lightning_script.py <output dir>
"""

import sys

import lightning as L
import torch
import torch.nn.functional as F
from _torch_script import loaders, mlp


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def _step(self, batch, stage: str):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss)
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean())
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)


if __name__ == "__main__":
    L.seed_everything(42)
    train, val, test = loaders()
    trainer = L.Trainer(
        max_epochs=20,
        default_root_dir=sys.argv[1],
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Classifier()
    trainer.fit(model, train, val)
    trainer.test(model, test)
