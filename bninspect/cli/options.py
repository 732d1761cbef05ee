"""The options the commands share, declared once: each command names them in its signature.

Typer reads an option's flags, metavar and help from the ``typer.Option`` in an ``Annotated``
type, so one alias here is one option everywhere (``key: Key = None``). Options only one
command has are declared with that command (``cli.commands``).
"""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

TRUST_HELP = "Allow loaders that run code from the file (torch.load weights_only=False, torch.jit.load). Only for files you trust."
JSON_HELP = "Print a JSON document instead of tables."
KEY_HELP = "Which state dict of a nested checkpoint to use, as a /-joined path (e.g. state_dict_ema)."
EPS_HELP = "Use this eps for every layer (state dicts do not store eps)."
STRICT_HELP = "Also check zip CRCs and safetensors duplicate keys."

Key = Annotated[Optional[str], typer.Option("--key", metavar="PATH", help=KEY_HELP)]
KeyB = Annotated[Optional[str], typer.Option("--key-b", metavar="PATH", help="Which state dict of a nested checkpoint B to use.")]
Eps = Annotated[Optional[float], typer.Option("--eps", metavar="EPS", help=EPS_HELP)]
Json = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
Trust = Annotated[bool, typer.Option("--trust", help=TRUST_HELP)]
Strict = Annotated[bool, typer.Option("--strict", help=STRICT_HELP)]
Layers = Annotated[Optional[List[str]], typer.Option("--layer", "-l", metavar="GLOB",
                                                     help="Only layers matching this glob (repeatable).")]
Arch = Annotated[Optional[str], typer.Option("--arch", metavar="MODULE:CALLABLE",
                                             help="Builds the model, e.g. torchvision.models:resnet18; imported from your "
                                                  "environment, the current directory first (like python -m).")]
ArchKwargs = Annotated[Optional[str], typer.Option("--arch-kwargs", metavar="JSON",
                                                   help="Keyword arguments for --arch as a JSON object.")]
Synthetic = Annotated[Optional[str], typer.Option("--synthetic", metavar="SHAPE",
                                                  help="Seeded N(0,1) inputs, e.g. 16x3x64x64: measures mechanics, not fitness.")]
BatchSizes = Annotated[Optional[str], typer.Option("--batch-sizes", metavar="B,B,...",
                                                   help="Batch sizes for small-batch drift and the eval/train gap "
                                                        "[default: 1,2,4,8,16,32].")]
