"""A torchvision-style Bottleneck ResNet as an ``nn.Module``, for the pickled-model benchmark files.

``torch.save(model)`` pickles the module tree with this module's class names, so the naive
baseline (``torch.load(weights_only=False)``) needs it importable: run.py puts this folder on
its path. Its state-dict keys are make_files.resnet_specs' (torchvision's names and order).
"""

from __future__ import annotations

from torch import nn


class Bottleneck(nn.Module):
    """conv 1×1 → BN → conv 3×3 → BN → conv 1×1 → BN, with a downsampling branch in the first block."""

    def __init__(self, inplanes: int, planes: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))
                           if downsample else None)


class ResNet(nn.Module):
    """Stem, four stages of Bottlenecks (``stages`` blocks each), and a 1000-way classifier."""

    def __init__(self, stages: tuple[int, ...], width: float) -> None:
        super().__init__()
        stem = int(64 * width)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        inplanes = stem
        for i, blocks in enumerate(stages):
            planes = int(64 * width) * 2**i
            layer = []
            for j in range(blocks):
                layer.append(Bottleneck(inplanes, planes, downsample=j == 0))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(inplanes, 1000)
