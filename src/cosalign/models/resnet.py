"""DeepLab-v2's dilated ResNet in the "Caffe" style (Chen et al., "DeepLab", TPAMI 2017).

It differs from torchvision's ResNet in three places, all kept here because the ImageNet
checkpoint used by every GTA5 -> Cityscapes paper was trained that way:
- the stride of a bottleneck sits on its first 1x1 conv, not on the 3x3;
- the max-pool uses ``ceil_mode=True``;
- layer3 and layer4 keep stride 1 with dilation 2 and 4: output stride 8 (1024x512 -> 129x65).
Depth 18/34 use basic blocks (stride on the first 3x3), 50/101 bottlenecks; ``width`` scales every
channel count so that a small variant trains on a CPU.
"""

from __future__ import annotations

from torch import Tensor, nn

BLOCKS_PER_DEPTH: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def preact(self, x: Tensor) -> Tensor:
        """The residual sum before the block's final ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out + (x if self.downsample is None else self.downsample(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.preact(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride, bias=False)  # Caffe: stride here
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def preact(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + (x if self.downsample is None else self.downsample(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.preact(x))


class ResNet(nn.Module):
    """Dilated ResNet backbone. ``forward`` returns (layer3, layer4 pre-ReLU, layer4).

    Shape: (B, 3, H, W) -> (B, C3, h, w), (B, C4, h, w), (B, C4, h, w), output stride 8
    (h = 65, w = 129 for 512x1024), with (C3, C4) = ``self.channels``: (1024, 2048) for
    ResNet-50/101 at width 1, (256, 512) for ResNet-18/34.
    """

    def __init__(self, depth: int = 101, width: float = 1.0) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_DEPTH:
            raise ValueError(f"depth must be one of {sorted(BLOCKS_PER_DEPTH)}, got {depth}")
        block = Bottleneck if depth >= 50 else BasicBlock
        base = max(1, round(64 * width))
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        n1, n2, n3, n4 = BLOCKS_PER_DEPTH[depth]
        self.layer1 = self._make_layer(block, base, n1, stride=1, dilation=1)
        self.layer2 = self._make_layer(block, base * 2, n2, stride=2, dilation=1)
        self.layer3 = self._make_layer(block, base * 4, n3, stride=1, dilation=2)
        self.layer4 = self._make_layer(block, base * 8, n4, stride=1, dilation=4)
        self.channels = (base * 4 * block.expansion, base * 8 * block.expansion)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int,
                    dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion or dilation > 1:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        c3 = self.layer3(x)  # (B, C3, h, w)
        x = self.layer4[:-1](c3)
        c4_pre = self.layer4[-1].preact(x)  # (B, C4, h, w), before the last ReLU
        return c3, c4_pre, c4_pre.relu()
