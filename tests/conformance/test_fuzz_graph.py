"""Mutation fuzzing of graph topology payloads (bounded, in CI): a damaged graph gives nncodec's own error.

The graph vectors' topology JSON is mutated structurally (values replaced, keys dropped, nodes swapped or
duplicated, references and operators changed) and as bytes; rebuilding must then fail with an
``NNCodecError`` or give a model whose run on the stated input fails only with an ``NNCodecError``.
"""

import json
from functools import lru_cache

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nncodec
from nncodec.bitstream.constants import UNIT_TOPOLOGY
from nncodec.conformance.forge import join_units, split_units
from nncodec.conformance.graph_vectors import graph_inputs
from nncodec.conformance.vectors import default_vectors_dir, load_manifest
from nncodec.errors import NNCodecError
from nncodec.graph import ALLOWED_OPERATORS
from nncodec.limits import Limits

SMALL = Limits(max_tensor_elements=1 << 20, max_total_decoded_bytes=1 << 26)
OPS = sorted(ALLOWED_OPERATORS)


@lru_cache(maxsize=1)
def corpus() -> tuple[tuple[bytes, dict, list], ...]:
    folder = default_vectors_dir()
    out = []
    for v in load_manifest(folder):
        graph = v.extra.get("graph")
        if graph and "inputs" in graph:
            header, units = split_units((folder / v.file).read_bytes())
            topo = next(json.loads(u[3]) for u in units if u[0] == UNIT_TOPOLOGY)
            out.append((header, units, topo, graph["inputs"]))
    return tuple(out)


def _paths(v, prefix=()):
    yield prefix
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, prefix + (i,))


def _names(topo):
    return [x["name"] for key in ("inputs", "tensors", "nodes") if isinstance(topo.get(key), list)
            for x in topo[key] if isinstance(x, dict) and isinstance(x.get("name"), str)]


@st.composite
def mutated(draw):
    header, units, topo, inputs = draw(st.sampled_from(corpus()))
    topo = json.loads(json.dumps(topo))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(topo))
        path = draw(st.sampled_from(paths[1:]))
        parent = topo
        for k in path[:-1]:
            parent = parent[k]
        kind = draw(st.sampled_from(["value", "ref", "op", "drop", "swap", "copy", "shape"]))
        names = _names(topo) or ["x"]
        if kind == "value":
            parent[path[-1]] = draw(st.one_of(st.none(), st.booleans(), st.integers(-2, 1 << 40), st.floats(),
                                              st.text(max_size=4), st.just([]), st.just({})))
        elif kind == "ref":
            parent[path[-1]] = {"ref": draw(st.sampled_from(names))}
        elif kind == "op":
            parent[path[-1]] = draw(st.sampled_from(OPS))
        elif kind == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif kind == "swap" and isinstance(parent, list) and len(parent) > 1:
            j = draw(st.integers(0, len(parent) - 1))
            parent[path[-1]], parent[j] = parent[j], parent[path[-1]]
        elif kind == "copy" and isinstance(parent, list):
            parent.insert(path[-1], json.loads(json.dumps(parent[path[-1]])))
        elif kind == "shape":
            parent[path[-1]] = draw(st.lists(st.integers(0, 1 << 20), max_size=4))
    raw = json.dumps(topo).encode()
    if draw(st.booleans()) and raw:  # a byte-level mutation too (may make it invalid JSON)
        pos = draw(st.integers(0, len(raw) - 1))
        raw = raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1:]
    forged = [(u[0], u[1], u[2], raw) if u[0] == UNIT_TOPOLOGY else u for u in units]
    return join_units(header, forged), inputs


@settings(max_examples=150, deadline=5000, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_graphs_raise_only_nncodec_errors(case):
    data, inputs = case
    try:
        model = nncodec.load_model(data, limits=SMALL)
    except NNCodecError:
        return
    args = [torch.from_numpy(x) for x in graph_inputs(inputs)]
    try:
        with torch.no_grad():
            model(*args)
    except NNCodecError:
        pass
