"""A toy recipe for the shared training loop's tests (``training_toy:ToyRecipe``): float64 so that runs split
differently over processes can be compared to ~1e-12, a frozen layer, per-sample noise from ``sample_seeds``."""
from __future__ import annotations

from pathlib import Path

import torch

DIM = 6


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.frozen = torch.nn.Linear(DIM, DIM).double()
        self.head = torch.nn.Linear(DIM, 1).double()
        with torch.no_grad():
            for p in [*self.frozen.parameters(), *self.head.parameters()]:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.tanh(self.frozen(x))).squeeze(-1)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, size: int):
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(size, DIM, generator=generator, dtype=torch.float64)
        self.y = self.x.sum(-1).sin()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index] + 0.01 * self.epoch}


class ToyRecipe:
    name = "toy"

    def build_model(self, config):
        return ToyModel()

    def parameter_groups(self, model, config):
        return [{"params": list(model.head.parameters()), "lr": config.get("toy_lr", 0.05), "name": "head"}]

    def build_dataset(self, config, split="train"):
        return ToyDataset(config.get("toy_samples", 16))

    def collate(self, samples):
        return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples])}

    def loss(self, model, batch, generator):
        noise = torch.stack([torch.randn((), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                             for s in batch["sample_seeds"]])
        error = model(batch["x"]) - batch["y"] - 0.1 * noise
        loss = (error ** 2).mean()
        return loss, {"abs_error": error.abs().mean()}

    def save_pretrained(self, model, directory: Path):
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "head.safetensors"
        save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(path))
        return [path]

    def validate(self, model, batch, directory: Path, step: int):
        path = directory / f"val-{step}.txt"
        path.write_text(str(float(model(batch["x"]).sum())))
        return [path]
