"""The precision a run computes in (``train.amp``), and the signature of the machine that
computed it.

``train.amp=auto`` (the MiniCity preset's choice) means bf16 autocast where the device computes
bf16 natively and fp32 elsewhere: a CUDA GPU with bf16 (Ampere and later); a CPU whose kernels
use AMX or AVX512-BF16. Other CPUs (AVX2-only ones: most laptops, AMD desktops, CI runners)
emulate bf16 in software, and one MiniCity step there took 14-19x as long as in fp32.

A CPU's kind is what torch's kernels will use, not only what the chip has: ATen dispatches by
``ATEN_CPU_CAPABILITY`` (``torch.backends.cpu.get_cpu_capability()``) and oneDNN, which runs
the convolutions, by ``ONEDNN_MAX_CPU_ISA``. Setting both to AVX2 on an AMX machine makes it
compute with an AVX2-only CPU's kernels (docs/REPRODUCIBILITY.md); when only one of them is
capped the kind names both (``avx2+onednn_amx``).

:func:`signature` is the key under which numbers pinned bit for bit are recorded (the pinned
test's terms, ``make numbers``): the device kind, the precision, torch's version, the threads,
and for a CPU the chip itself (:func:`chip`). Capped kernels compute close to, not bit for bit
as, another vendor's chip of that kind: an Intel AMX Xeon capped to AVX2 moved the pinned terms
by up to 7.4e-6 relative from an AMD EPYC's AVX2 record (the libraries also tune to the chip).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# CPU kinds, slowest first; the last two compute bf16 natively
LEVELS = ("default", "avx2", "avx512", "avx512_bf16", "amx")
NATIVE_BF16 = ("avx512_bf16", "amx")
SLOWDOWN = "14-19x"  # bf16 autocast against fp32, one MiniCity step on 2 AVX2 cores


def _hardware_level() -> str:
    """The CPU's own level, from torch's cpuinfo (the highest the kernels could use)."""
    try:
        flags = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):  # torch without the cpuinfo query: assume no
        return "avx512"  # native bf16 (fp32 is never the slow choice)
    if flags.get("amx_bf16"):
        return "amx"
    if flags.get("avx512_bf16"):
        return "avx512_bf16"
    if flags.get("avx512_f") and flags.get("avx512_bw") and flags.get("avx512_vl"):
        return "avx512"
    return "avx2" if flags.get("avx2") else "default"


def _aten_cap() -> str:
    """ATen's kernel level (``ATEN_CPU_CAPABILITY``): AVX512 caps nothing below AMX."""
    cap = torch.backends.cpu.get_cpu_capability().upper()
    return {"AVX512": "amx", "AVX2": "avx2"}.get(cap, "default")


def _onednn_cap() -> str:
    """oneDNN's cap (``ONEDNN_MAX_CPU_ISA``, or the older ``DNNL_MAX_CPU_ISA``)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    if isa in ("", "ALL", "DEFAULT"):
        return "amx"
    if "AMX" in isa:
        return "amx"
    if "BF16" in isa or "FP16" in isa or isa.startswith("AVX10"):
        return "avx512_bf16"
    if isa.startswith("AVX512"):
        return "avx512"
    return "avx2" if isa.startswith("AVX2") else "default"


def _lower(a: str, b: str) -> str:
    return LEVELS[min(LEVELS.index(a), LEVELS.index(b))]


def cpu_kind() -> str:
    """What this CPU's kernels compute with: ``avx2``, ``amx``, ... (or
    ``<aten level>+onednn_<level>`` when the two kernel libraries are capped differently)."""
    arch = platform.machine().lower()
    if arch not in ("x86_64", "amd64"):  # e.g. aarch64-sve256: never taken as native bf16
        return f"{arch}-{torch.backends.cpu.get_cpu_capability().lower()}"
    hw = _hardware_level()
    aten, onednn = _lower(hw, _aten_cap()), _lower(hw, _onednn_cap())
    return aten if aten == onednn else f"{aten}+onednn_{onednn}"


def device_kind(device: torch.device) -> str:
    """``cpu-avx2``, ``cpu-amx``, ``cuda-NVIDIA H200``..."""
    if device.type == "cuda":
        return f"cuda-{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu-{cpu_kind()}"
    return device.type


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (so bf16 autocast is faster than fp32)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return all(part.split("onednn_")[-1] in NATIVE_BF16 for part in cpu_kind().split("+"))
    return False


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """``train.amp`` as the run computes it: (``none`` | ``bf16`` | ``fp16``, one line that says
    what was chosen and why; it warns when bf16 is asked of a device that emulates it)."""
    kind = device_kind(device)
    if amp == "auto":
        if native_bf16(device):
            return "bf16", (f"precision: bf16 autocast (train.amp=auto: {kind} computes bf16 "
                            "natively)")
        return "none", (f"precision: fp32 (train.amp=auto: {kind} has no native bf16; "
                        "train.amp=bf16 would emulate it)")
    if amp == "bf16" and not native_bf16(device):
        return "bf16", (f"precision: bf16 autocast (train.amp=bf16), but {kind} has no native bf16 "
                        f"and emulates it: expect steps {SLOWDOWN} slower than fp32 "
                        "(train.amp=auto or none runs fp32)")
    name = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[amp]
    return amp, f"precision: {name} (train.amp={amp}, {kind})"


def precision_name(amp: str) -> str:
    """A resolved ``train.amp`` as a precision: fp32, bf16, fp16."""
    return {"none": "fp32"}.get(amp, amp)


CPUINFO = Path("/proc/cpuinfo")  # Linux: the CPUID vendor string, as ``vendor_id``
VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


def _vendor() -> str:
    """``Intel``, ``AMD``...: the CPUID vendor where Linux reports it, else the first word of
    the name torch's cpuinfo gives (``unknown`` without either)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                return VENDORS.get(vendor, vendor)
    except OSError:
        pass
    try:
        name = torch._C._cpu._get_cpu_capability().get("cpu_name", "")
    except (AttributeError, RuntimeError):
        name = ""
    return (name.split() or ["unknown"])[0]


def chip() -> str:
    """The CPU itself: its vendor and the highest level it could compute at, whatever the
    kernels are capped to (``AMD avx2``, ``Intel amx``)."""
    arch = platform.machine().lower()
    level = _hardware_level() if arch in ("x86_64", "amd64") else arch
    return f"{_vendor()} {level}"


def signature(device: torch.device, amp: str) -> str:
    """The key of numbers recorded bit for bit: ``cpu-avx2/fp32/torch 2.13.0+cpu/2 threads/AMD
    avx2`` (kind/precision/torch/threads, and the chip on a CPU). ``amp`` is the resolved one
    (:func:`resolve_amp`)."""
    threads = torch.get_num_threads()
    key = (f"{device_kind(device)}/{precision_name(amp)}/torch {torch.__version__}/"
           f"{threads} thread{'s' if threads != 1 else ''}")
    return f"{key}/{chip()}" if device.type == "cpu" else key
