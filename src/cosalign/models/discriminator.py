"""The AdvEnt discriminator (Vu et al., "ADVENT", CVPR 2019; docs/METHOD.md section 4).

Fully convolutional: five 4x4 convs with stride 2 (64-128-256-512-1 channels, LeakyReLU 0.2 in
between) on the (B, K, H, W) weighted self-information map; outputs (B, 1, H/32, W/32) logits,
source = 0, target = 1.
"""

from __future__ import annotations

from torch import Tensor, nn


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        chans = [num_classes, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
