"""train.amp=auto and the machine signature (engine/precision.py): the choice follows what the
CPU's kernels compute natively, the run says it on its first line and records it."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

import cosalign.engine.precision as precision
from cosalign.engine.checkpoint import list_checkpoints, load_checkpoint
from cosalign.engine.precision import cpu_kind, native_bf16, resolve_amp, signature
from cosalign.engine.train import train

AMX = {"amx_bf16": True, "avx512_bf16": True, "avx512_f": True, "avx512_bw": True,
       "avx512_vl": True, "avx2": True, "cpu_name": "Intel Xeon"}
AVX2 = {"avx2": True, "cpu_name": "AMD EPYC 7B13"}
CPU = torch.device("cpu")


def _machine(monkeypatch, flags: dict, aten: str, onednn: str | None = None,
             cpuinfo: Path | None = None, vendor: str | None = None) -> None:
    """Pretend to be an x86 CPU with these cpuinfo ``flags``, ATen capability and oneDNN cap;
    with ``cpuinfo``, Linux's /proc/cpuinfo is that file, naming ``vendor`` (none: no file)."""
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    if cpuinfo is not None:
        cpuinfo.unlink(missing_ok=True)
        if vendor is not None:
            cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\n")
        monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: flags, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)


@pytest.mark.parametrize("flags, aten, onednn, kind, native", [
    (AMX, "AVX512", None, "amx", True),  # an AMX Xeon as it is
    (AMX, "AVX2", "AVX2", "avx2", False),  # the same, computing as an AVX2-only CPU
    (AMX, "AVX2", None, "avx2+onednn_amx", False),  # one library capped: no record matches
    (AMX, "AVX512", "AVX512_CORE", "amx+onednn_avx512", False),
    ({**AMX, "amx_bf16": False}, "AVX512", None, "avx512_bf16", True),  # e.g. AMD Zen 4
    ({"avx2": True, "avx512_f": True, "avx512_bw": True, "avx512_vl": True}, "AVX512", None,
     "avx512", False),
    (AVX2, "AVX2", None, "avx2", False),  # AMD EPYC (Zen 3), most laptops and CI runners
    (AVX2, "DEFAULT", "SSE41", "default", False),
])
def test_cpu_kind_follows_what_the_kernels_use(monkeypatch, flags, aten, onednn, kind, native):
    _machine(monkeypatch, flags, aten, onednn)
    assert cpu_kind() == kind
    assert native_bf16(CPU) is native
    amp, said = resolve_amp("auto", CPU)
    assert amp == ("bf16" if native else "none")
    assert said.startswith("precision: " + ("bf16" if native else "fp32"))
    assert f"cpu-{kind}" in said


def test_another_architecture_is_named_and_runs_fp32(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "SVE256")
    assert cpu_kind() == "aarch64-sve256" and not native_bf16(CPU)
    assert resolve_amp("auto", CPU)[0] == "none"


def test_explicit_choices_are_kept_and_emulated_bf16_is_called_slow(monkeypatch):
    _machine(monkeypatch, AVX2, "AVX2")
    amp, said = resolve_amp("bf16", CPU)
    assert amp == "bf16" and "emulates it" in said and "slower than fp32" in said
    assert "\n" not in said
    assert resolve_amp("none", CPU)[0] == "none"
    _machine(monkeypatch, AMX, "AVX512")
    amp, said = resolve_amp("bf16", CPU)
    assert amp == "bf16" and "slow" not in said
    assert resolve_amp("none", CPU) == ("none", "precision: fp32 (train.amp=none, cpu-amx)")


def test_signature_names_kind_precision_torch_threads_and_chip(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    _machine(monkeypatch, AVX2, "AVX2", cpuinfo=cpuinfo, vendor="AuthenticAMD")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    amd = f"cpu-avx2/fp32/torch {torch.__version__}/2 threads/AMD avx2"
    assert signature(CPU, "none") == amd
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert signature(CPU, "bf16") == f"cpu-avx2/bf16/torch {torch.__version__}/1 thread/AMD avx2"
    # an AMX Xeon capped to AVX2 computes with AVX2 kernels, but not bit for bit as the AMD chip
    # (measured: the pinned terms moved by up to 7.4e-6 relative), so its records are its own
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    _machine(monkeypatch, AMX, "AVX2", "AVX2", cpuinfo=cpuinfo, vendor="GenuineIntel")
    assert signature(CPU, "none") == amd.replace("AMD avx2", "Intel amx")
    _machine(monkeypatch, AMX, "AVX2", "AVX2", cpuinfo=cpuinfo)  # no /proc/cpuinfo: the name
    assert signature(CPU, "none") == amd.replace("AMD avx2", "Intel amx")  # torch's cpuinfo gives
    _machine(monkeypatch, {**AMX, "cpu_name": ""}, "AVX512", cpuinfo=cpuinfo)
    unnamed = f"cpu-amx/bf16/torch {torch.__version__}/2 threads/unknown amx"
    assert signature(CPU, "bf16") == unnamed


def test_a_run_says_and_records_what_it_chose(tiny_config, tmp_path, capsys):
    """The first line a run prints, its config.yaml and its checkpoints name the precision
    train.amp=auto resolved to, and the machine signature."""
    cfg = copy.deepcopy(tiny_config)
    cfg.train.amp = "auto"
    cfg.train.iters = cfg.optim.schedule_iters = 2
    cfg.train.checkpoint_every = 2
    amp, said = resolve_amp("auto", torch.device(cfg.train.device))
    machine = signature(torch.device(cfg.train.device), amp)
    train(cfg, tmp_path / "run", progress=False)
    out = capsys.readouterr()
    assert (out.out + out.err).splitlines()[0] == f"run: {said}"
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert text.splitlines()[0] == f"# {said}; machine: {machine}"
    assert yaml.safe_load(text)["train"]["amp"] == "auto"  # the request is kept; resume re-resolves
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert state["precision"] == precision.precision_name(amp) and state["machine"] == machine


def test_a_resume_on_another_machine_says_so(tiny_config, tmp_path, capsys, monkeypatch):
    cfg = copy.deepcopy(tiny_config)
    cfg.train.iters = cfg.optim.schedule_iters = 4
    cfg.train.checkpoint_every = 2
    train(cfg, tmp_path / "run", progress=False, stop_at=2)
    capsys.readouterr()
    monkeypatch.setattr("cosalign.engine.train.signature", lambda device, amp: "cpu-other/x")
    train(cfg, tmp_path / "run", progress=False)
    out = capsys.readouterr()
    assert "continued on cpu-other/x: not bit for bit" in out.out + out.err
