"""Peak dense FLOP/s of known accelerators, for model FLOPs utilisation (MFU = achieved / peak).

Figures are NVIDIA's datasheet numbers in TFLOP/s *without* structured sparsity (the datasheets
print the sparse figure, twice these, for tf32 / bf16 / fp16). "fp32" is the plain CUDA-core figure;
"tf32", "bf16" and "fp16" are tensor-core figures. A device or precision missing here gets no MFU.

    peak_tflops("NVIDIA H100 80GB HBM3", "bf16")  # 989.4
    matmul_dtype("bf16-mixed")                    # "bf16"
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import torch

# (words that must all appear in torch.cuda.get_device_name(), upper-cased; label; TFLOP/s). Words, not
# substrings: "L4" must not match "L40S", nor "H200" "GH200".
# Order matters: the first match wins, so specific variants come before the generic name.
PEAK_TFLOPS: List[Tuple[Tuple[str, ...], str, Dict[str, float]]] = [
    (("GH200",), "GH200 (H100-class GPU)", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (("H200", "NVL"), "H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (("H200",), "H200 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (("H100", "NVL"), "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (("H100", "PCIE"), "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (("H100",), "H100 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (("A100",), "A100 (SXM4 and PCIe)", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    (("L4",), "L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    (("V100", "PCIE"), "V100 PCIe", {"fp32": 14.0, "fp16": 112.0}),
    (("V100",), "V100 SXM2", {"fp32": 15.7, "fp16": 125.0}),
]


def known_devices() -> List[str]:
    return [label for _, label, _ in PEAK_TFLOPS]


def match_device(device_name: str) -> Optional[Tuple[str, Dict[str, float]]]:
    words = set(re.split(r"[^A-Z0-9]+", device_name.upper()))
    for fragments, label, peaks in PEAK_TFLOPS:
        if all(f in words for f in fragments):
            return label, peaks
    return None


def matmul_dtype(precision: str) -> Optional[str]:
    """The number format the matmuls of a Lightning `precision` setting run in: bf16, fp16, tf32 or
    fp32 (fp32 matmuls count as tf32 when PyTorch is allowed to use tensor cores for them). None for
    anything else (fp64, fp8 engines)."""
    p = str(precision).lower()
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16"):
        return "fp16"
    if p.startswith("32"):
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        return "tf32" if tf32 else "fp32"
    return None


def peak_tflops(device_name: str, dtype: Optional[str]) -> Optional[float]:
    found = match_device(device_name)
    if found is None or dtype is None:
        return None
    return found[1].get(dtype)


def mfu_note(device_name: str, dtype: Optional[str]) -> str:
    """Why a run has no MFU (empty when it has one)."""
    found = match_device(device_name)
    if found is None:
        return (f"no MFU: the peak FLOP/s of {device_name!r} is not in profiling/peaks.py "
                f"(known: {', '.join(known_devices())})")
    if dtype is None or dtype not in found[1]:
        return f"no MFU: no {dtype or 'such'}-precision peak listed for {found[0]}"
    return ""
