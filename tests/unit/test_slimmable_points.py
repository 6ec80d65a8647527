"""Width scalability: nested channel prefixes as operating points, and joint (slimmable) training."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import nncodec
from nncodec.scalable import encode_scalable
from nncodec.search.slimmable import (forward_at_width, narrow_topology, sub_network, train_slimmable,
                                      width_shapes)
from nncodec.train import accuracy, train_classifier


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("c0", nn.Conv2d(1, 8, 3)), ("a0", nn.ReLU()), ("c1", nn.Conv2d(8, 16, 3)),
                                      ("a1", nn.ReLU()), ("flat", nn.Flatten()), ("fc", nn.Linear(16 * 4 * 4, 10))]))


@pytest.fixture(scope="module")
def digits():
    from nncodec.datasets import load_digits, split

    x, y = load_digits()
    return split(x[:900], y[:900], 0.3, 0)


def test_width_shapes_are_channel_prefixes_and_the_sub_network_computes_the_sliced_forward():
    model = _net()
    shapes = width_shapes(model, 0.5)
    assert shapes == {"c0.weight": (4, 1, 3, 3), "c0.bias": (4,), "c1.weight": (8, 4, 3, 3), "c1.bias": (8,),
                      "fc.weight": (10, 8 * 16), "fc.bias": (10,)}
    small = sub_network(model, 0.5)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), forward_at_width(model, x, 0.5), atol=1e-6)
        assert torch.equal(forward_at_width(model, x, 1.0), model(x))
    with pytest.raises(nncodec.ConfigError, match="width must be"):
        width_shapes(model, 0)
    with pytest.raises(nncodec.ConfigError, match="BatchNorm"):
        width_shapes(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), 0.5)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("flat", nn.Flatten()), ("h", nn.Linear(64, 32)), ("a", nn.ReLU()),
                                      ("out", nn.Linear(32, 10))]))


def test_joint_training_makes_the_narrow_widths_usable(digits):
    x_train, y_train, x_test, y_test = digits
    plain = train_classifier(_mlp(), x_train, y_train, epochs=6, lr=1e-2)
    slim = train_slimmable(_mlp(), x_train, y_train, [0.25], epochs=6, lr=1e-2)
    plain_quarter = accuracy(sub_network(plain, 0.25), x_test, y_test)  # 8 of 32 hidden units
    slim_quarter = accuracy(sub_network(slim, 0.25), x_test, y_test)
    assert slim_quarter > 0.6 and slim_quarter > plain_quarter + 0.2, (slim_quarter, plain_quarter)
    assert accuracy(slim, x_test, y_test) > 0.6


def test_width_points_decode_to_the_sub_networks_and_load_model_rebuilds_them():
    model = _net()
    points = [{"bits": 4, "width": 0.25}, {"bits": 6, "width": 0.5}, {"bits": 8}]
    data, report = nncodec.encode_with_report(model, operating_points=points, energy_input_shape=(1, 8, 8))
    energies = [p.energy_pj for p in report.points]
    assert energies[0] < energies[1] < energies[2]
    for k, (w, bits) in enumerate([(0.25, 4), (0.5, 6), (1.0, 8)]):
        separate = nncodec.decode(nncodec.encode(sub_network(model, w), bits=bits))
        got = nncodec.decode(data, operating_point=k)
        assert got.keys() == separate.keys() and all(torch.equal(got[n], separate[n]) for n in got)
        rebuilt = nncodec.load_model(data, operating_point=k)
        assert rebuilt.c0.out_channels == max(1, int(np.ceil(8 * w)))
        with torch.no_grad():
            x = torch.randn(2, 1, 8, 8)
            expect = sub_network(model, w)
            expect.load_state_dict(separate)
            assert torch.allclose(rebuilt(x), expect(x), atol=1e-5)
    assert nncodec.load_model(data, energy_budget_pj=energies[1]).c1.out_channels == 8
    with nncodec.open(data, operating_point=1) as f:
        assert f.header("c1.weight").shape == (8, 4, 3, 3) and f.get_array("c1.weight").shape == (8, 4, 3, 3)
    # the full-size module cannot take a narrow point
    with pytest.raises(nncodec.ConfigError, match="shape of"):
        nncodec.load_into(_net(), data, operating_point=0)


def test_growing_refinements_and_bad_shapes():
    rng = np.random.default_rng(3)
    t = {"w": rng.standard_normal((6, 5)).astype(np.float32), "ids": np.arange(9, dtype=np.int64)}
    points = [{"bits": 3, "shapes": {"w": (2, 5), "ids": (4,)}}, {"bits": 3, "shapes": {"w": (4, 5)}}, {"bits": 8}]
    data, _ = encode_scalable(t, points)
    modes = {u.tensor["name"] + str(u.tensor["refines_to_point"]): u.tensor["mode"]
             for u in nncodec.read_info(data).units if u.type == "refinement"}
    assert modes["ids1"] == 3 and modes["w1"] in (2, 3)  # grows: lossless ints replaced, codes as residuals
    for k, rows in enumerate((2, 4, 6)):
        separate = nncodec.decode_arrays(nncodec.encode_arrays(
            {"w": np.ascontiguousarray(t["w"][:rows]), "ids": t["ids"][:4] if k == 0 else t["ids"]},
            bits=points[k]["bits"]))
        got = nncodec.decode_arrays(data, operating_point=k)
        assert all(np.array_equal(got[n], separate[n]) for n in t)
    with pytest.raises(nncodec.ConfigError, match="shrinks"):
        encode_scalable(t, [{"bits": 3, "shapes": {"w": (4, 5)}}, {"bits": 4, "shapes": {"w": (2, 5)}}])
    with pytest.raises(nncodec.ConfigError, match="not a leading block"):
        encode_scalable(t, [{"bits": 3, "shapes": {"w": (7, 5)}}])
    with pytest.raises(nncodec.ConfigError, match="not a tensor"):
        encode_scalable(t, [{"bits": 3, "shapes": {"nope": (1,)}}])


def test_narrow_topology_sets_channel_counts():
    from nncodec.topology import describe

    topo = narrow_topology(describe(_net()), width_shapes(_net(), 0.5))
    conv = dict(topo["root"]["children"])["c1"]["args"]
    assert (conv["in_channels"], conv["out_channels"]) == (4, 8)
    assert dict(topo["root"]["children"])["fc"]["args"]["in_features"] == 128
