"""What every benchmark gets: the device, the timer, the size preset; and what it gives back:
a list of ``Case`` (one label and one callable that measures and returns rows), so that the
runner can show one progress bar over all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moesim.calibrate.device import DeviceInfo
from moesim.calibrate.timing import Timer

Row = dict[str, Any]


@dataclass
class Context:
    device: DeviceInfo
    timer: Timer
    quick: bool = False
    seed: int = 0

    @property
    def torch_device(self) -> str:
        return self.device.torch_device

    @property
    def cuda(self) -> bool:
        return self.device.kind == "cuda"

    def generator(self):
        """A seeded torch generator on the device, for reproducible random inputs."""
        import torch

        return torch.Generator(device=self.torch_device).manual_seed(self.seed)


@dataclass
class Case:
    label: str
    run: Callable[[], list[Row]]
