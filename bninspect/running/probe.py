"""Each BN layer's input in a TorchScript model, which takes no Python forward hooks.

No public PyTorch API does this: TorchScript modules refuse hooks, the TorchScript interpreter
calls operators without going through Python, and a graph can be made callable only with
``torch._C._create_function_from_graph`` (private), run against the module's C++ object
``model._c`` (private too). Both are looked up once, before anything is built: where a PyTorch
release renames or removes one, :func:`script_probe` raises :class:`NoProbe` with a note, and
`drift` measures at the output only, as it does for a graph it cannot read (never a traceback).
"""

from __future__ import annotations

import torch

from bninspect.running.interface import Probe
from bninspect.running.modules import bn_modules

# Why there is no probe, where the graph is not of the plain shape it relies on.
GRAPH_SHAPE = "this TorchScript graph does not show its BN inputs in the plain form bninspect reads"


class NoProbe(Exception):
    """A TorchScript model whose BN inputs cannot be watched; the message says why, for drift's notes."""


def script_probe(model: torch.jit.ScriptModule) -> tuple[Probe, list[str]]:
    """A function returning each BN layer's input for a TorchScript model, and the BN names in
    graph order; :class:`NoProbe` where the graph or this PyTorch does not allow one.

    The module's inlined graph is copied and every ``aten::batch_norm`` input is added to its
    outputs; the copy runs against the same module object, so it reads the current training
    flags and buffers.
    """
    try:
        create_function = torch._C._create_function_from_graph
        tuple_type = torch._C.TupleType
        module_object = model._c
    except AttributeError:
        raise NoProbe(f"this PyTorch ({torch.__version__}) lacks the private graph API bninspect reads "
                      "TorchScript BN inputs with") from None
    try:
        graph = model.inlined_graph
        self_value = next(iter(graph.inputs()))
        known = {name for name, _ in bn_modules(model)}
        names, values = [], []
        for node in graph.findAllNodes("aten::batch_norm"):
            inputs = list(node.inputs())
            name = _owner(inputs[3], self_value)  # running_mean, read from the module that owns it
            top_level = inputs[0].node().owningBlock() == graph.return_node().owningBlock()
            if name in known and name not in names and top_level:
                names.append(name)
                values.append(inputs[0])
        if not names:
            raise NoProbe(GRAPH_SHAPE)
        ret = graph.return_node()
        outputs = list(ret.inputs())
        # A method returns one value: pack the original output(s) and the BN inputs in a tuple.
        pack = graph.create("prim::TupleConstruct", outputs + values)
        pack.output().setType(tuple_type([v.type() for v in outputs + values]))
        pack.insertBefore(ret)
        while list(graph.outputs()):
            graph.eraseOutput(0)
        graph.registerOutput(pack.output())
        function = create_function("bninspect_drift_probe", graph)
    except NoProbe:
        raise
    except Exception:  # a graph shape we do not know: the caller measures the output only
        raise NoProbe(GRAPH_SHAPE) from None
    count = len(outputs)

    def probe(x: torch.Tensor) -> dict[str, torch.Tensor]:
        result = function(module_object, x)
        return dict(zip(names, result[count:]))

    return probe, names


def _owner(value: torch.Value, self_value: torch.Value) -> str | None:
    """The path of the module whose attribute ``value`` is read from (a chain of
    ``prim::GetAttr`` from the graph's ``self``), None where it is computed."""
    parts = []
    while value is not self_value:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        parts.append(node.s("name"))
        value = next(iter(node.inputs()))
    return ".".join(reversed(parts[1:]))  # parts[0] is the buffer's own name
