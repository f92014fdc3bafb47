import math

from pyscale.plan.pareto import pareto_front


def test_the_front_keeps_exactly_the_non_dominated_points_by_time():
    pts = [{"id": i, "time_s": t, "energy_j": e} for i, (t, e) in enumerate(
        [(3.0, 1.0), (1.0, 5.0), (2.0, 2.0), (2.5, 2.0), (1.5, 6.0), (4.0, 1.0), (2.0, 2.0)])]
    assert [p["id"] for p in pareto_front(pts)] == [1, 2, 0]  # (2.5, 2), (1.5, 6), (4, 1) and the repeat lose


def test_unusable_points_are_left_out_and_keys_are_chosen():
    pts = [{"t": 1.0, "kwh": None}, {"t": math.nan, "kwh": 1.0}, {"t": 0.0, "kwh": 1.0}, {"t": 2.0, "kwh": 3.0}]
    assert pareto_front(pts, time_key="t", energy_key="kwh") == [{"t": 2.0, "kwh": 3.0}]
    assert pareto_front([]) == []
