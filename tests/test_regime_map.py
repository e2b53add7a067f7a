"""The regime-map study runner: its calibration and a 2-point smoke run of the real simulator."""
import csv
import importlib.util
import math
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("regime_map", ROOT / "bench" / "regime_map.py")
regime_map = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regime_map)


@given(scale=st.floats(1e2, 1e6), power=st.floats(0.3, 1.5), target=st.floats(1.5, 40.0))
def test_calibration_reaches_the_target_of_a_power_law(scale, power, target):
    """compression = scale / knob**power: the secant steps land within the aim when some knob can."""
    calls = []

    def run_at(knob):
        calls.append(knob)
        return {"compression": scale / knob ** power}

    knob, tried = regime_map.calibrate(run_at, 50, target, aim=0.04, tries=6, lo=1, hi=100_000)
    ideal = (scale / target) ** (1 / power)
    assert set(tried) == set(calls) and len(calls) <= 6
    if 2 <= ideal <= 50_000:  # reachable with integer knobs to within the rounding of the knob
        got = scale / knob ** power
        assert abs(got / target - 1) <= max(0.04, 1.05 * ((1 + 1 / ideal) ** power - 1))


def test_bad_study_configs_are_named(tmp_path):
    with pytest.raises(regime_map.StudyError, match="no grid 'nope'"):
        regime_map.load_study(regime_map.DEFAULT_CONFIG, grid="nope")
    bad = tmp_path / "bad.toml"
    bad.write_text(regime_map.DEFAULT_CONFIG.read_text().replace('task = "smoke", W = 5', 'task = "smok", W = 5'))
    with pytest.raises(regime_map.StudyError, match="unknown task 'smok'"):
        regime_map.load_study(bad, smoke=True)
    with pytest.raises(regime_map.StudyError, match="does not exist"):
        regime_map.load_study(tmp_path / "missing.toml")


def test_smoke_run_matches_compression_and_writes_the_map(tmp_path):
    out = tmp_path / "map"
    assert regime_map.main(["--smoke", "--out", str(out)]) == 0
    with open(out / "points.csv") as fh:
        rows = list(csv.DictReader(fh))
    setup = regime_map.load_study(regime_map.DEFAULT_CONFIG, smoke=True)
    ids = [p["id"] for p in setup["points"]]
    assert len(ids) == 2 and sorted({r["point"] for r in rows}) == sorted(ids)
    for pid in ids:
        methods = {r["method"]: r for r in rows if r["point"] == pid}
        assert set(methods) == {"fetchsgd", "local_topk", "fedavg"}
        target = float(methods["fetchsgd"]["target"])
        for r in methods.values():
            # Matched overall compression: every run within 10 % of FetchSGD's.
            assert r["matched"] == "True"
            assert abs(float(r["ratio_min"]) - 1) <= 0.1 and abs(float(r["ratio_max"]) - 1) <= 0.1
            assert math.isclose(float(r["compression_mean"]) / target, 1, abs_tol=0.1)
            assert 0 <= float(r["acc_mean"]) <= 1
        # The decomposition adds up: bytes of a run over its reference give its compressions.
        with open(out / "runs.csv") as fh:
            final = [r for r in csv.DictReader(fh) if r["point"] == pid and r["phase"] == "final"]
        assert {r["method"] for r in final} == set(methods)
        for r in final:
            ref = float(r["ref_up_bytes"]) + float(r["ref_down_bytes"])
            assert math.isclose(ref / (float(r["up_bytes"]) + float(r["down_bytes"])), float(r["compression"]),
                                rel_tol=1e-4)
    for name in ("heatmap.png", "bytes.png", "summary.md", "runs.csv"):
        assert (out / name).stat().st_size > 0
