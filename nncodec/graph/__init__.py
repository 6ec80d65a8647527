"""Graph topologies: a model's ``torch.export`` graph stored as data, so it reloads without its Python class.

``schema`` (allow-list, errors, validation) needs only the standard library; ``capture`` and ``rebuild``
import torch and are imported on use.
"""

from .schema import (ALLOWED_OPERATORS, GRAPH_FORMAT, GRAPH_VERSION, DanglingReferenceError, GraphError,
                     GraphSpec, GraphTensorMismatchError, UnknownOperatorError, validate)

__all__ = ["ALLOWED_OPERATORS", "GRAPH_FORMAT", "GRAPH_VERSION", "GraphError", "UnknownOperatorError",
           "DanglingReferenceError", "GraphTensorMismatchError", "GraphSpec", "validate", "stream_tensor_specs"]


def stream_tensor_specs(units: list) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of the tensors listed by :func:`nncodec.read_info` (tensor units and
    tensor-group members)."""
    entries = [t for u in units for t in ([u.tensor] if u.tensor else getattr(u, "members", None) or [])]
    return {t["name"]: (t["dtype"], tuple(t["shape"])) for t in entries}
