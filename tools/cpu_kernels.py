"""Which kernels this CPU computes with, and the signature numbers are recorded under.

    .venv/bin/python tools/cpu_kernels.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python tools/cpu_kernels.py

Prints ATen's capability (``ATEN_CPU_CAPABILITY``), the instruction set oneDNN reports and the
implementation it picks for a convolution in fp32 and in bf16 (``ONEDNN_MAX_CPU_ISA``; read
from oneDNN's verbose log in a child process), whether ``train.amp=auto`` picks bf16, and the
machine signature of engine/precision.py. The second command is how an AMX machine computes
with an AVX2-only CPU's kernels (close to such a chip, not bit for bit; the signature names the
chip): both lines must then say AVX2 (docs/REPRODUCIBILITY.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

PROBE = """
import torch
x, w = torch.randn(8, 16, 32, 32), torch.randn(16, 16, 3, 3)
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.conv2d(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.nn.functional.conv2d(x, w)
"""


def onednn_kernels() -> tuple[str, list[str]]:
    """(oneDNN's ISA line, the convolution implementations it ran: fp32, then bf16 when
    oneDNN takes bf16 convolutions at all; without native bf16 torch runs them elsewhere)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "0"}).stdout.splitlines()
    isa = next((ln.split("isa:")[1] for ln in out if ",isa:" in ln), "unknown")
    convs = [f"{f[6]} ({f[8].split(':')[1]})" for f in (ln.split(",") for ln in out)
             if f[2:6] == ["primitive", "exec", "cpu", "convolution"]]
    return isa, convs


def main() -> int:
    import torch

    from cosalign.engine.precision import cpu_kind, native_bf16, resolve_amp, signature

    cpu = torch.device("cpu")
    isa, convs = onednn_kernels()
    amp, said = resolve_amp("auto", cpu)
    print(f"ATen capability: {torch.backends.cpu.get_cpu_capability()} "
          f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')})")
    print(f"oneDNN ISA: {isa} (ONEDNN_MAX_CPU_ISA="
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}); convolutions: "
          f"{', '.join(convs) or 'none'}")
    print(f"CPU kind: {cpu_kind()}; native bf16: {native_bf16(cpu)}")
    print(f"train.amp=auto -> {said}")
    print(f"signature: {signature(cpu, amp)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
