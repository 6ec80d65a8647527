"""The search's Pareto set emitted as one scalable stream."""

import pytest
import torch

import nncodec
from nncodec.search.candidate import build_candidate
from nncodec.search.pareto_points import encode_pareto, pareto_front
from tests.search.digits import digits_cnn, space


def _row(number, kernel_bits, energy, acc, width=None, state="COMPLETE", infeasible=False, groups=()):
    params = {f"{g}.kernel": f"quantized_bits({kernel_bits},0,1)" for g in groups}
    if width is not None:
        params.update(width)
    return {"number": number, "state": state, "params": params, "accuracy": acc, "energy_pj": energy,
            "infeasible": infeasible}


def test_pareto_front_keeps_the_non_dominated_rows():
    rows = [_row(0, 8, 100.0, 0.9), _row(1, 4, 50.0, 0.8), _row(2, 4, 60.0, 0.7), _row(3, 2, 20.0, 0.5),
            _row(4, 2, 10.0, 0.95, infeasible=True), _row(5, 2, 5.0, 0.99, state="FAIL"), _row(6, 6, 100.0, 0.85)]
    assert [r["number"] for r in pareto_front(rows)] == [3, 1, 0]


def test_the_front_becomes_one_stream_whose_points_are_the_plans():
    torch.manual_seed(0)
    reference = digits_cnn()
    sp = space(reference, widths=(0.5, 1.0))
    groups = sorted({layer.group for layer in sp.layers})
    rows = [_row(0, 8, 300.0, 0.9, groups=groups), _row(1, 4, 200.0, 0.8, groups=groups),
            _row(2, 2, 100.0, 0.6, groups=groups), _row(3, 3, 150.0, 0.55, groups=groups)]  # 3 is dominated
    data, report, skipped = encode_pareto(reference, sp, rows)
    assert skipped == [] and [p.label for p in report.points] == ["trial 2", "trial 1", "trial 0"]
    assert [p.energy_pj for p in report.points] == [100.0, 200.0, 300.0]
    for k, row in enumerate([rows[2], rows[1], rows[0]]):
        candidate = build_candidate(reference, sp.input_shape, sp.plan_from(row["params"]))
        separate = nncodec.decode(nncodec.encode(candidate))
        got = nncodec.decode(data, operating_point=k)
        assert got.keys() == separate.keys() and all(torch.equal(got[n], separate[n]) for n in got)
    assert nncodec.load_model(data, energy_budget_pj=250.0).nncodec_operating_point == 1
    # a cheaper plan that is wider than a dearer one cannot nest: it is left out
    narrow = {sp._width_key(sp.layers[0].group): 0.5}
    rows = [_row(0, 8, 300.0, 0.9, groups=groups, width=narrow), _row(2, 2, 100.0, 0.6, groups=groups)]
    _, report, skipped = encode_pareto(reference, sp, rows)
    assert skipped == [0] and len(report.points) == 1


def test_joint_training_makes_the_narrow_pareto_point_usable():
    """With joint_training the front's widths are fine-tuned together (slimmable): the quarter-width point of
    the stream classifies far better than the quarter-width prefix of a model trained at full width only,
    and the stream decodes at each point to that point's sub-network."""
    from nncodec.search import SearchSpace
    from nncodec.search.slimmable import sub_network
    from nncodec.train import accuracy, train_classifier
    from tests.search.digits import BITS, INPUT, KERNELS, data

    x_train, y_train, x_test, y_test = data()
    x_train, y_train = x_train[:900], y_train[:900]
    torch.manual_seed(0)
    reference = digits_cnn()
    sp = SearchSpace.from_model(reference, INPUT, x_train[:128], kernels=KERNELS, bits=BITS,
                                widths=(0.25, 1.0), width_mode="block")
    groups = sorted({layer.group for layer in sp.layers})
    rows = [_row(0, 8, 300.0, 0.9, groups=groups), _row(1, 4, 100.0, 0.5, groups=groups, width={"all.width": 0.25})]

    def evaluate(model):
        return accuracy(model, x_test, y_test)

    data_, report, skipped = encode_pareto(reference, sp, rows, joint_training=(x_train, y_train), joint_epochs=3,
                                           joint_lr=5e-3, evaluate=evaluate)
    assert skipped == [] and [p.energy_pj for p in report.points] == [100.0, 300.0]
    narrow = nncodec.load_model(data_, operating_point=0)
    assert narrow[0].out_channels == 2 and nncodec.load_model(data_)[0].out_channels == 8
    assert evaluate(narrow) == report.points[0].accuracy
    torch.manual_seed(0)
    alone = train_classifier(digits_cnn(), x_train, y_train, epochs=3, lr=5e-3)
    alone_quarter = evaluate(build_candidate(sub_network(alone, 0.25), INPUT,
                                             sp.plan_from({f"{g}.kernel": "quantized_bits(4,0,1)" for g in groups})))
    assert report.points[0].accuracy > 0.5 and report.points[0].accuracy > alone_quarter + 0.25, \
        (report.points[0].accuracy, alone_quarter)
    with pytest.raises(nncodec.ConfigError, match="one multiplier"):
        bad = SearchSpace.from_model(reference, INPUT, x_train[:128], kernels=KERNELS, bits=BITS, widths=(0.5, 1.0))
        key = bad._width_key(sorted(bad.width_choices)[0])
        encode_pareto(reference, bad, [_row(0, 4, 1.0, 0.5, groups=groups, width={key: 0.5})],
                      joint_training=(x_train, y_train))
    with pytest.raises(nncodec.ConfigError, match="only with joint_training"):
        encode_pareto(reference, sp, rows, evaluate=evaluate)
    with pytest.raises(nncodec.ConfigError, match="joint_lr"):
        encode_pareto(reference, sp, rows, joint_training=(x_train, y_train), joint_lr=0)
