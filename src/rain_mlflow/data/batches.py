"""The training device's view of the data: windows gathered from one [T, C] series already on the device."""

from __future__ import annotations

import torch
from torch import Tensor

from rain_mlflow.data.dataset import PreparedData


class Batches:
    """Windows gathered on the device from the one [T, C] series: no per-sample Python in the hot loop."""

    def __init__(self, data: PreparedData, device: torch.device):
        self.series = torch.from_numpy(data.series).to(device)
        self.offsets = torch.arange(-data.window + 1, 1, device=device)
        self.ends = {n: torch.from_numpy(s.ends).to(device) for n, s in data.splits.items()}
        self.labels = {n: torch.from_numpy(s.labels).to(device) for n, s in data.splits.items()}

    def get(self, split: str, index: Tensor) -> tuple[Tensor, Tensor]:
        ends = self.ends[split][index]
        return self.series[ends[:, None] + self.offsets], self.labels[split][index]
