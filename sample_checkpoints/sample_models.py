"""Tiny models and a synthetic dataset for bninspect's sample checkpoints.

Importable on its own (``sample_checkpoints`` on ``sys.path``): ``bninspect drift --arch
sample_models:mobilenet_v1_tiny`` builds a model with the no-argument builder functions below,
and a full pickled module (``resnet_tiny_module.pt``) refers to these classes as
``sample_models.<Class>``. Module names follow the checkpoints our users ask about (the seed
question's MobileNet V1, torchvision's ResNet), so discovery is tested on real-world key layouts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NUM_CLASSES = 4
IMAGE_SIZE = 16
# A fixed seed for the class templates: every split (train, calibration, shifted) of the
# synthetic task must share the same classes, only the noise depends on the caller's seed.
_TEMPLATE_SEED = 20200911


def _class_templates(size: int = IMAGE_SIZE) -> torch.Tensor:
    """One 3×size×size template per class: a colour cast plus an oriented sine grating."""
    g = torch.Generator().manual_seed(_TEMPLATE_SEED)
    colours = torch.randn(NUM_CLASSES, 3, generator=g)
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    templates = []
    for k in range(NUM_CLASSES):
        angle = math.pi * k / NUM_CLASSES
        freq = (1 + k % 2) / size  # cycles per pixel; two frequencies so classes differ in scale too
        grating = torch.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        templates.append(0.5 * colours[k][:, None, None] + grating[None])
    return torch.stack(templates)


def synthetic_images(
    n: int, seed: int, shift: float = 0.0, size: int = IMAGE_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``n`` seeded images ``x`` [n, 3, size, size] (float32) and labels ``y`` [n] (int64).

    A tiny 4-class task: each class has a fixed template, each image adds Gaussian noise
    (σ = 0.5) drawn from ``seed``. ``shift`` is added to every pixel, a controlled distribution
    shift for drift experiments (the statistics of the first BN move with it). The same
    ``(n, seed, shift)`` always gives the same tensors.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    noise = torch.randn(n, 3, size, size, generator=g)
    x = _class_templates(size)[y] + 0.5 * noise + shift
    return x, y


class DepthwiseBlock(nn.Module):
    """Depthwise 3×3 conv → BN → ReLU, named as in the seed question (``dw_conv_k3``, ``bn``)."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.dw_conv_k3 = nn.Conv2d(
            channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False
        )
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply depthwise conv, BN and ReLU."""
        return self.relu(self.bn(self.dw_conv_k3(x)))


class PointwiseBlock(nn.Module):
    """Pointwise 1×1 conv → BN → ReLU, named as in the seed question (``p_conv_k1``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p_conv_k1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply pointwise conv, BN and ReLU."""
        return self.relu(self.bn(self.p_conv_k1(x)))


class MobileNetV1Tiny(nn.Module):
    """The seed question's MobileNet V1, shrunk: conv 3→32, dw 32, pw 32→64, dw 64 (stride 2), pw 64→128.

    State dict keys: ``features.0.weight`` [32,3,3,3], ``features.0.bias`` [32],
    ``features.2.dw_conv_k3.weight`` [32,1,3,3], ``features.2.bn.*`` (32),
    ``features.3.p_conv_k1.weight`` [64,32,1,1], ``features.3.bn.*`` (64),
    ``features.4.dw_conv_k3.weight`` [64,1,3,3], ``features.4.bn.*`` (64),
    ``features.5.p_conv_k1.weight`` [128,64,1,1], ``features.5.bn.*`` (128),
    ``classifier.weight`` [4,128], ``classifier.bias`` [4].
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=True),
            nn.ReLU(),
            DepthwiseBlock(32),
            PointwiseBlock(32, 64),
            DepthwiseBlock(64, stride=2),
            PointwiseBlock(64, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits [N, num_classes] for images [N, 3, H, W]."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: conv1/bn1/relu/conv2/bn2 plus an optional projection."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNetTiny(nn.Module):
    """A two-block ResNet with torchvision's names (widths 16 and 32).

    BN layers: ``bn1`` (16), ``layer1.0.bn1``/``bn2`` (16), ``layer2.0.bn1``/``bn2`` (32) and the
    projection shortcut's ``layer2.0.downsample.1`` (32, after the 1×1 ``downsample.0``).
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(16, 16))
        projection = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2, downsample=projection))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits [N, num_classes] for images [N, 3, H, W]."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class NormsTiny(nn.Module):
    """Convs with GroupNorm and a LayerNorm, no BatchNorm anywhere: a checkpoint with zero BN layers.

    Its traps for discovery: ``gn1`` (16) and ``norm2`` (32) are GroupNorms whose weight and bias
    have exactly the width of the conv before them (like a BN without running statistics), and
    ``ln`` is a LayerNorm over 32 features before the Linear head.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(8, 32)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.ln = nn.LayerNorm(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits [N, num_classes] for images [N, 3, H, W]."""
        x = self.relu(self.gn1(self.conv1(x)))
        x = self.relu(self.norm2(self.conv2(x)))
        return self.head(self.ln(torch.flatten(self.pool(x), 1)))


def mobilenet_v1_tiny() -> MobileNetV1Tiny:
    """Build an untrained MobileNetV1Tiny (the ``--arch sample_models:mobilenet_v1_tiny`` builder)."""
    return MobileNetV1Tiny()


def resnet_tiny() -> ResNetTiny:
    """Build an untrained ResNetTiny (the ``--arch sample_models:resnet_tiny`` builder)."""
    return ResNetTiny()


def norms_tiny() -> NormsTiny:
    """Build an untrained NormsTiny (the ``--arch sample_models:norms_tiny`` builder)."""
    return NormsTiny()


# Builders by name, for scripts that pick an architecture from a string.
BUILDERS = {
    "mobilenet_v1_tiny": mobilenet_v1_tiny,
    "resnet_tiny": resnet_tiny,
    "norms_tiny": norms_tiny,
}
