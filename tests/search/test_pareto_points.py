"""The search's Pareto set emitted as one scalable stream."""

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
