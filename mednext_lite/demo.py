"""``make demo``: the preset table and one real training step, on any CPU, with no network."""

from __future__ import annotations

import time

import torch

from .model import MedNeXt, MedNeXtConfig
from .profile import format_table, preset_table


def main() -> int:
    print("MedNeXt presets (3D, 1 input channel, 3 classes, 1x128^3 input):\n")
    print(format_table(preset_table(3)))
    torch.manual_seed(0)
    config = MedNeXtConfig(in_channels=1, num_classes=3, base_width=8, block_counts=1, deep_supervision=True)
    model = MedNeXt(config)
    x = torch.randn(2, 1, 32, 32, 32)
    y = ((x > 0.5).long() + (x > 1.5).long())[:, 0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-4, weight_decay=3e-5)
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x)[0], y)
    loss.backward()
    opt.step()
    print(f"\none training step of a small MedNeXt on a synthetic 32^3 volume: loss {loss.item():.4f} "
          f"({time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
