"""Graph topologies: any exportable model reloads without its class, and hostile graphs are refused early."""

import copy
import io
import subprocess
import sys

import pytest
import torch
from torch import nn

import nncodec
from nncodec.conformance.graph_vectors import edit_topology
from nncodec.errors import ConfigError, FormatError, LimitExceededError
from nncodec.graph import (ALLOWED_OPERATORS, DanglingReferenceError, GraphError, GraphTensorMismatchError,
                           UnknownOperatorError, validate)
from nncodec.limits import Limits
from nncodec.prune.unstructured import apply_masks, global_magnitude_masks
from nncodec.quant.layers import quantize_model
from nncodec.topology import TopologyError


class Residual(nn.Module):
    """ResNet basic block with a projection shortcut (stride 2, 1x1 conv + BN)."""

    def __init__(self, cin: int = 8, cout: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, padding=1), nn.BatchNorm2d(cin), nn.ReLU())
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))
        self.act2 = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cout, 10))

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.head(self.act2(y + self.proj(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, ReLU6, 1x1 linear projection, identity shortcut."""

    def __init__(self, c: int = 8, expand: int = 4):
        super().__init__()
        h = c * expand
        self.block = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                                   nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                                   nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        return self.fc((x + self.block(x)).mean(dim=(2, 3)))


class Recurrent(nn.Module):
    def __init__(self, cell: type = nn.LSTM):
        super().__init__()
        self.rnn = cell(6, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1]), y


class TextEncoder(nn.Module):
    """Token + position embeddings, a 2-layer nn.TransformerEncoder, mean pooling; returns a dict."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(40, 16)
        self.positions = nn.Parameter(torch.randn(1, 7, 16) * 0.1)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2)
        self.fc = nn.Linear(16, 2)

    def forward(self, ids):
        h = self.encoder(self.tokens(ids) + self.positions)
        return {"logits": self.fc(h.mean(1)), "hidden": h}


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _models():
    torch.manual_seed(0)
    return {
        "resnet": (_randomize_bn(Residual()), (torch.randn(2, 3, 16, 16),)),
        "inverted_residual": (_randomize_bn(InvertedResidual()), (torch.randn(2, 8, 8, 8),)),
        "lstm": (Recurrent(nn.LSTM).eval(), (torch.randn(2, 5, 6),)),
        "gru": (Recurrent(nn.GRU).eval(), (torch.randn(2, 5, 6),)),
        "transformer": (TextEncoder().eval(), (torch.randint(0, 40, (2, 7)),)),
    }


MODELS = _models()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.fixture(scope="module")
def streams():
    return {name: nncodec.encode(model, example_inputs=args) for name, (model, args) in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_graph_reloads_without_the_class_from_path_bytes_and_file(name, streams, tmp_path):
    model, args = MODELS[name]
    data = streams[name]
    path = tmp_path / "m.nnc"
    path.write_bytes(data)
    want = model(*args)  # grad mode: nn.TransformerEncoder's fused inference path is not the exported one
    for src in (path, str(path), data, io.BytesIO(data)):
        rebuilt = nncodec.load_model(src)
        assert not rebuilt.training
        assert _same(want, rebuilt(*args)), f"{name} from {type(src).__name__}"
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_file_object_is_read_once(streams):
    class Counting(io.BytesIO):
        returned = 0

        def read(self, *a):
            out = super().read(*a)
            Counting.returned += len(out)
            return out

    model, args = MODELS["gru"]
    assert _same(model(*args), nncodec.load_model(Counting(streams["gru"]))(*args))
    assert Counting.returned == len(streams["gru"])  # every byte once: not rewound, not read again


def test_graph_records_operators_shapes_and_names(streams):
    topo = nncodec.read_info(streams["lstm"]).topology
    assert topo["format"] == "nncodec.graph" and topo["version"] == 1
    assert topo["inputs"] == [{"name": "x", "dtype": "float32", "shape": [2, 5, 6]}]
    ops = {n["op"] for n in topo["nodes"]}
    assert "aten.lstm.input" in ops and ops <= ALLOWED_OPERATORS
    targets = {t["target"] for t in topo["tensors"] if t["kind"] == "parameter"}
    assert targets == set(MODELS["lstm"][0].state_dict())
    assert {"tuple": [0, 1]} == topo["structure"]


def test_rebuilt_model_can_be_copied(streams):
    model, args = MODELS["gru"]
    rebuilt = nncodec.load_model(streams["gru"])
    twin = copy.deepcopy(rebuilt)  # the GRU's zeros() keeps its run-time device argument
    assert _same(model(*args), twin(*args))
    with torch.no_grad():
        twin.rnn.weight_hh_l0.zero_()
    assert not _same(model(*args), twin(*args)) and _same(model(*args), rebuilt(*args))


def test_other_input_shapes_are_refused_at_run_time(streams):
    rebuilt = nncodec.load_model(streams["resnet"])
    with pytest.raises(ConfigError, match=r"captured for torch.float32 \[2, 3, 16, 16\]"):
        rebuilt(torch.randn(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="takes 1 inputs"):
        rebuilt()


@pytest.mark.parametrize("kernel,widths", [("quantized_bits(6,0,1)", {}),
                                           ("ternary(alpha='auto_po2')", {"stem.0": 0.5, "conv1": 0.5})])
def test_searched_resnet_with_activation_quantizers_reloads(kernel, widths):
    from nncodec.quant.plan import Plan
    from nncodec.search.candidate import build_candidate

    torch.manual_seed(1)
    model, args = MODELS["resnet"]
    plan = Plan.from_dict({"widths": widths, "default": {"kernel": kernel, "bias": "quantized_bits(8,2,1)",
                                                         "activation": "quantized_relu(4,2)"}})
    q = build_candidate(model, (3, 16, 16), plan)  # the search's candidate: resized, then fake-quantized
    apply_masks(q, global_magnitude_masks(q, 0.6))
    q.eval()
    data = nncodec.encode(q, example_inputs=args)
    topo = nncodec.read_info(data).topology
    ops = {n["op"] for n in topo["nodes"]}
    assert {"aten.round.default", "aten.clamp.default"} & ops  # activation quantizers, as plain ATen operators
    assert not any(t["target"].endswith("weight_mask") for t in topo["tensors"] if t["kind"] != "constant")
    rebuilt = nncodec.load_model(data)
    with torch.no_grad():
        want, got = q(*args), rebuilt(*args)
    assert torch.equal(want, got)
    conv = dict(rebuilt.named_parameters())["conv1.weight"]
    assert (conv == 0).float().mean() > 0.3  # pruned weights arrive as zeros
    assert conv.shape[0] == (8 if widths else 16)


def test_encode_without_example_inputs_keeps_the_sequential_topology():
    seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    topo = nncodec.read_info(nncodec.encode(seq)).topology
    assert topo["format"] == "nncodec.topology"
    assert nncodec.read_info(nncodec.encode(MODELS["resnet"][0])).topology is None


def test_unexportable_model_is_an_encode_error_pointing_to_load_into():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1

    with pytest.raises(TopologyError, match="load_into"):
        nncodec.encode(DataDependent(), example_inputs=(torch.ones(3),))


def test_operator_outside_the_allow_list_is_an_encode_error():
    class CumProd(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, 0) + torch.sort(x).values

    with pytest.raises(TopologyError, match=r"aten\.cumprod\.default.*aten\.sort\.default.*load_into"):
        nncodec.encode(CumProd(), example_inputs=(torch.ones(3),))


def test_example_inputs_that_do_not_apply_are_errors():
    model, args = MODELS["gru"]
    with pytest.raises(ConfigError, match="nn.Module"):
        nncodec.encode(model.state_dict(), example_inputs=args)
    with pytest.raises(ConfigError, match="does not apply"):
        nncodec.encode(model, example_inputs=args, topology=False)
    with pytest.raises(ConfigError, match="tuple of tensors"):
        nncodec.encode(model, example_inputs=([1, 2],))


def test_save_records_the_topology(tmp_path):
    model, args = MODELS["inverted_residual"]
    path = nncodec.save(model, tmp_path / "g.nnc", {"who": "test"}, example_inputs=args)
    assert _same(model(*args), nncodec.load_model(path)(*args))
    seq = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval()
    x = torch.randn(2, 4)
    assert torch.equal(seq(x), nncodec.load_model(nncodec.save(seq, tmp_path / "s.nnc"))(x))
    with pytest.raises(ConfigError, match="example_inputs"):
        nncodec.save(seq.state_dict(), tmp_path / "t.nnc", example_inputs=(x,))


def test_load_into_reads_a_file_object(streams):
    model, args = MODELS["lstm"]
    fresh = Recurrent(nn.LSTM)
    assert nncodec.load_into(fresh, io.BytesIO(streams["lstm"])) == []
    assert _same(model(*args), fresh.eval()(*args))


# -- hostile graphs ------------------------------------------------------------------------------------


def _set_op(topo):
    topo["nodes"][3]["op"] = "aten.empty.memory_format"


def _dangle(topo):
    topo["nodes"][2]["args"][0] = {"ref": "not_defined"}


def _forward_ref(topo):
    topo["nodes"][0]["args"][0] = {"ref": topo["nodes"][-1]["name"]}


def _shape(topo):
    topo["tensors"][0]["shape"][0] += 1


def _missing_tensor(topo):
    next(t for t in topo["tensors"] if t["kind"] == "parameter")["target"] = "no.such.weight"


def _malformed(topo):
    topo["nodes"][1]["args"] = {"not": "a list"}


def _bad_value(topo):
    topo["nodes"][1]["args"].append({"module": "os.system"})


def _duplicate(topo):
    topo["nodes"][2]["name"] = topo["nodes"][1]["name"]


def _wrong_arity(topo):
    topo["nodes"][1]["args"] += [1, 2, 3, 4, 5, 6, 7, 8, 9]


HOSTILE = [(_set_op, UnknownOperatorError, "aten.empty.memory_format"), (_dangle, DanglingReferenceError, "not_defined"),
           (_forward_ref, DanglingReferenceError, "not defined before"), (_shape, GraphTensorMismatchError, "holds"),
           (_missing_tensor, DanglingReferenceError, "no.such.weight"), (_malformed, GraphError, "must be a list"),
           (_bad_value, GraphError, "os.system"), (_duplicate, GraphError, "defined twice"),
           (_wrong_arity, GraphError, "positionally")]


@pytest.mark.parametrize("edit,error,match", HOSTILE, ids=[h[0].__name__ for h in HOSTILE])
def test_hostile_graph_is_refused_before_weights_or_operators(edit, error, match, streams, monkeypatch):
    import nncodec.graph.rebuild as rebuild
    import nncodec.torch_io as torch_io

    data = edit_topology(streams["resnet"], edit)
    calls = []
    monkeypatch.setattr(torch_io, "load_into", lambda *a, **k: calls.append("load_into"))
    real_run = rebuild.GraphModel._run
    monkeypatch.setattr(rebuild.GraphModel, "_run", lambda *a, **k: calls.append("run") or real_run(*a, **k))
    with pytest.raises(error, match=match) as info:
        nncodec.load_model(data)
    assert isinstance(info.value, FormatError)
    assert calls == []
    nncodec.decode(data)  # the topology unit is ancillary: the tensors still decode


def test_huge_intermediate_is_refused_on_meta_before_allocation(streams):
    def grow(topo):
        node = next(n for n in topo["nodes"] if n["op"] == "aten.view.default" or n["op"] == "aten.flatten.using_ints")
        node["op"], node["args"] = "aten.zeros.default", [[1 << 20, 1 << 20]]
        node.pop("kwargs", None)

    data = edit_topology(streams["resnet"], grow)
    with pytest.raises(LimitExceededError, match="max_tensor_elements"):
        nncodec.load_model(data, limits=Limits(max_tensor_elements=1 << 24))


def test_an_input_shape_too_large_to_index_is_a_limit_error_not_a_torch_error(streams):
    def huge(topo):  # 2.3e18 elements: torch's storage size overflows on meta
        topo["inputs"][0]["shape"] = [9226, 9248, 45769, 590469]

    data = edit_topology(streams["resnet"], huge)
    with pytest.raises(LimitExceededError, match="input .* elements"):
        nncodec.load_model(data)


def test_operator_failing_on_shapes_is_a_graph_error(streams):
    def mismatch(topo):
        node = next(n for n in topo["nodes"] if n["op"] == "aten.linear.default")
        node["args"][1] = {"ref": topo["inputs"][0]["name"]}

    with pytest.raises(GraphError, match="fails on meta tensors"):
        nncodec.load_model(edit_topology(streams["resnet"], mismatch))


def test_embedding_of_a_one_dimensional_weight_is_a_graph_error(streams):
    # torch's meta kernel refuses it with an AssertionError, not a RuntimeError
    def flat_table(topo):
        node = next(n for n in topo["nodes"] if n["op"] == "aten.embedding.default")
        one_dim = next(t for t in topo["tensors"] if len(t["shape"]) == 1)
        node["args"][0] = {"ref": one_dim["name"]}

    with pytest.raises(GraphError, match="fails on meta tensors"):
        nncodec.load_model(edit_topology(streams["transformer"], flat_table))


def test_validation_needs_no_torch():
    code = ("import sys, json; from nncodec.graph import validate, GraphError\n"
            "g = {'format': 'nncodec.graph', 'version': 1, 'inputs': [{'name': 'x', 'dtype': 'float32', "
            "'shape': [2]}], 'tensors': [], 'nodes': [{'name': 'y', 'op': 'aten.relu.default', "
            "'args': [{'ref': 'x'}]}], 'outputs': [{'ref': 'y'}], 'structure': 0}\n"
            "validate(g)\nassert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validate_reports_structure_problems():
    good = {"format": "nncodec.graph", "version": 1, "inputs": [{"name": "x", "dtype": "float32", "shape": [2]}],
            "tensors": [], "nodes": [{"name": "y", "op": "aten.relu.default", "args": [{"ref": "x"}]}],
            "outputs": [{"ref": "y"}], "structure": 0}
    assert len(validate(good).nodes) == 1
    for edit, match in [(lambda g: g.update(version=2), "upgrade"), (lambda g: g.update(structure=1), "fresh index"),
                        (lambda g: g["inputs"][0].update(dtype="complex64"), "unknown dtype"),
                        (lambda g: g.update(extra=1), "unknown fields"),
                        (lambda g: g["nodes"][0].update(args=[[[[[[[[[[1]]]]]]]]]]), "nested"),
                        (lambda g: g.update(outputs=[{"float": "1e999"}]), "not a value")]:
        g = copy.deepcopy(good)
        edit(g)
        with pytest.raises(GraphError, match=match):
            validate(g)


def test_format_md_lists_the_allow_list():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "FORMAT.md").read_text(encoding="utf-8")
    section = text[text.index("### 11.9 Operator allow-list"):]
    block = section[section.index("```\n") + 4:]
    listed = {f"aten.{op}" for op in block[:block.index("```")].split()} | {"getitem"}
    assert listed == ALLOWED_OPERATORS


def test_every_allowed_operator_exists_in_torch():
    from nncodec.graph.rebuild import _operator

    for op in ALLOWED_OPERATORS:
        assert callable(_operator(op)), op


def test_quantized_pruned_transformer_reloads():
    model, args = MODELS["transformer"]
    q = quantize_model(model, {"default": {"kernel": "quantized_bits(4,0,1)", "bias": "quantized_bits(8,1,1)",
                                           "activation": "quantized_bits(8,2,1)"}})
    assert any(type(m).__name__ == "QLinear" for m in q.modules())
    apply_masks(q, global_magnitude_masks(q, 0.5))
    q.eval()
    rebuilt = nncodec.load_model(nncodec.encode(q, example_inputs=args))
    want, got = q(*args), rebuilt(*args)
    assert _same(want, got)
