"""choose_hardware: one source per plan, errors in the API's words (parameters) and the CLI's (flags);
Plan's cost block."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyscale import cli
from pyscale.commands.plan import FLAGS
from pyscale.plan import Budget, ParameterError, PlanCost, choose_hardware, plan
from pyscale.plan.step_model import hardware_for_profile


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mfu": 0.4}, "mfu=/power_w= need gpu=NAME"),
    ({"gpu": "H100 SXM", "mfu": 0.4, "store": "x.db"}, "mfu=/power_w= and store= are alternative"),
    ({"n_devices": 8, "pue": 1.2}, "n_devices, pue given without hardware to apply to: add gpu=NAME"),
    ({"n_devices": 0}, "n_devices must be >= 1"),
    ({"gpu": "H100 SXM", "mfu": 0.4, "n_devices": 8}, r"dp_efficiency is required .* dp_efficiency=0\.9"),
    ({"gpu": "H100 SXM", "mfu": 1.5}, r"mfu must be in \(0, 1\]"),
])
def test_api_errors_name_parameters_not_flags(kwargs, message):
    with pytest.raises(ParameterError, match=message) as info:
        choose_hardware(**kwargs)
    assert "--" not in str(info.value)


def test_the_cli_spells_each_listed_parameter_once_as_its_flag():
    err = ParameterError("price_per_device_hour given without hardware: add gpu=NAME (with mfu=), or dtype",
                         "price_per_device_hour", "gpu", "mfu")
    assert cli.in_flags(str(err), FLAGS, err.parameters) == (
        "--price-per-gpu-hour given without hardware: add --gpu NAME (with --mfu), or dtype")  # dtype: not listed
    err = ParameterError("n_devices=8 needs dp_efficiency=0.9", "n_devices", "dp_efficiency")
    assert cli.in_flags(str(err), FLAGS, err.parameters) == "--n-gpus 8 needs --dp-efficiency 0.9"


@pytest.mark.parametrize(("flags", "line"), [
    (["--gpu", "H100 SXM", "--mfu", "1.5"], "pyscale plan: --mfu must be in (0, 1]: got 1.5"),
    (["--gpu", "H100 SXM", "--mfu", "0.4", "--n-gpus", "8"], "pyscale plan: --dp-efficiency is required for --n-gpus 8"),
    (["--mfu", "0.4"], "pyscale plan: --mfu/--power-w need --gpu NAME (to know the peak)"),
])
def test_cli_errors_name_flags(capsys, flags, line):
    assert cli.main(["plan", "--flops", "1e21", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(line) and "dp_efficiency=" not in err


def test_no_source_is_no_hardware_and_gpu_alone_has_no_throughput(monkeypatch):
    import pyscale.costmodel

    assert choose_hardware() is None
    monkeypatch.setattr(pyscale.costmodel, "load_shipped_profile", lambda name: None)
    hw = choose_hardware("H100 SXM")
    assert hw.device_name == "H100 SXM" and hw.flops_source is None and hw.peak_flops_per_s > 0


def test_a_profile_object_a_profile_file_and_a_shipped_profile_price_alike(profile, tmp_path, monkeypatch):
    import pyscale.costmodel

    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    direct = hardware_for_profile(profile, n_devices=2, dp_efficiency=0.9)
    monkeypatch.setattr(pyscale.costmodel, "load_shipped_profile", lambda name: profile if name == "Synth" else None)
    chosen = [choose_hardware(profile=profile, n_devices=2, dp_efficiency=0.9),
              choose_hardware(profile=path, n_devices=2, dp_efficiency=0.9),
              choose_hardware("Synth", n_devices=2, dp_efficiency=0.9)]
    probe = plan(Budget("gpu_hours", 100), hardware=direct, seq_len=1024).config
    for hw in chosen:
        assert hw.step_options == direct.step_options and hw.step_options["dtype"] == "bf16"
        assert hw.throughput(probe) == direct.throughput(probe) and hw.n_devices == 2


def test_plan_cost_block_reads_through_and_json_stays_flat():
    p = plan(Budget("gpu_hours", 1000), hardware=choose_hardware("H100 SXM", mfu=0.4, power_w=600))
    assert isinstance(p.cost, PlanCost)
    assert (p.time_s, p.energy_kwh, p.device, p.n_devices) == (p.cost.time_s, p.cost.energy_kwh, "H100 SXM", 1)
    d = p.to_dict()
    assert "cost" not in d and list(d)[list(d).index("memory") + 1:list(d).index("inference_tokens")] == \
        list(PlanCost.__dataclass_fields__)
    assert json.loads(json.dumps(d, default=str))["time_s"] == pytest.approx(p.time_s)
    with pytest.raises(AttributeError):
        p.time_s = 1.0  # figures live in p.cost; the flat names only read it


def test_choosing_hardware_and_planning_from_a_profile_need_no_torch(profile, tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    code = ("import sys; from pyscale import cli; "
            f"assert cli.main(['plan', '--gpu-hours', '100', '--profile', {str(path)!r}, '--json']) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
