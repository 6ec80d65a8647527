"""Graph topologies: a model's ``torch.export`` graph stored as data, so it reloads without its Python class.

``schema`` (allow-list, errors, validation) needs only the standard library; ``capture`` and ``rebuild``
import torch and are imported on use.
"""

from typing import Any

from .schema import (ALLOWED_OPERATORS, GRAPH_FORMAT, GRAPH_VERSION, DanglingReferenceError, GraphError,
                     GraphSpec, GraphTensorMismatchError, UnknownOperatorError, validate)

__all__ = ["ALLOWED_OPERATORS", "GRAPH_FORMAT", "GRAPH_VERSION", "GraphError", "UnknownOperatorError",
           "DanglingReferenceError", "GraphTensorMismatchError", "GraphSpec", "validate", "stream_tensor_specs"]


def stream_tensor_specs(info: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of the tensors a :func:`nncodec.read_info` result lists (tensor units and
    tensor-group members, through ``StreamInfo.tensor_entries``), and of its aliases (tied tensors: an output
    layer sharing the embedding's weight), each with its target's."""
    specs = {t["name"]: (t["dtype"], tuple(t["shape"])) for t in info.tensor_entries()}
    specs.update({alias: specs[target] for alias, target in info.aliases.items() if target in specs})
    return specs
