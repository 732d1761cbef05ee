"""bninspect: understand and debug the BatchNorm layers of PyTorch checkpoints."""

__version__ = "0.1.0"
