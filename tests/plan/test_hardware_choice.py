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


def test_same_device_normalises_names_and_tells_h100_variants_apart():
    from pyscale.costmodel import same_device

    assert same_device("H100 SXM", "NVIDIA H100 80GB HBM3") and same_device("h100-sxm", "H100_SXM")
    assert same_device("NVIDIA GeForce RTX 4090", "rtx 4090")
    for a, b in (("H100 SXM", "H100 PCIe"), ("H100 SXM", "H200"), ("H100 PCIe", "NVIDIA H200"),
                 ("H100 SXM", "cpu-somehost"), ("Synthetic GPU", "H100 SXM")):
        assert not same_device(a, b) and not same_device(b, a), (a, b)


@pytest.mark.parametrize(("gpu", "device", "agree"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", True), ("h100 sxm", "H100 SXM", True),
    ("H100 PCIe", "H100 SXM", False), ("H200", "H100 SXM", False), ("H100 SXM", "cpu-buildhost", False),
])
def test_a_gpu_and_a_profile_of_another_device_are_an_error_naming_both(profile, gpu, device, agree):
    import dataclasses

    of_device = dataclasses.replace(profile, device_name=device)
    if agree:
        assert choose_hardware(gpu, profile=of_device).device_name == device
        return
    with pytest.raises(ParameterError, match="name different devices") as info:
        choose_hardware(gpu, profile=of_device)
    assert gpu in str(info.value) and device in str(info.value) and "drop" in str(info.value)


def test_a_gpu_and_a_store_of_another_device_are_an_error_naming_both(tmp_path):
    from pyscale.plan.measured import STEP_OP
    from pyscale.store import DeviceRecord, MeasurementRecord, Store

    db = tmp_path / "steps.db"
    with Store(db) as store:
        dev = store.register_device(DeviceRecord(kind="cuda", name="NVIDIA H100 PCIe", uuid="GPU-1"))
        store.record(MeasurementRecord(op=STEP_OP, backend="step", params={"n_params": 1e8}, dtype="bfloat16",
                                       time_s=0.1, model_flops=1e14).explain_missing("synthetic row"), device_id=dev)
    assert choose_hardware("H100 PCIe", store=db).device_name == "NVIDIA H100 PCIe"
    with pytest.raises(ParameterError, match="name different devices") as info:
        choose_hardware("H100 SXM", store=db)
    assert "'NVIDIA H100 PCIe'" in str(info.value) and "'H100 SXM'" in str(info.value)


def test_cli_gpu_and_profile_of_another_device(profile, tmp_path, capsys):
    path = tmp_path / "cpu.json"
    path.write_text(profile.to_json())  # a profile of "Synthetic GPU"
    assert cli.main(["plan", "--flops", "1e21", "--gpu", "H100 SXM", "--profile", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err == ("pyscale plan: --gpu 'H100 SXM' and --profile name different devices: --profile was measured on "
                   "'Synthetic GPU'; drop --gpu to plan on that device, or drop --profile to plan on 'H100 SXM'\n")
