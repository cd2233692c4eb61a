"""What a GPU can do at best: its dense 16-bit tensor rate, fp32 rate and memory bandwidth, by model name.

The figures are the vendors' dense (no sparsity) datasheet numbers: leads, not measurements. GeForce cards
count their 16-bit tensor rate with fp32 accumulation (what autocast's products use), half their fp16-accumulate
rate; where NVIDIA publishes no such figure for a card, it is the card's SMs x boost clock x the 512 FLOP per
clock and SM that the Ampere and Ada whitepapers give for the RTX 3090 (71 TFLOP/s) and RTX 4090 (165.2).
A card not in the table gets no peak, so MFU and the bandwidth fraction say "n/a" rather than a guess; so
does a variant of a listed card (Ti, SUPER, a laptop or PCIe part), which runs at other clocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePeak:
    """Dense peak throughput (TFLOP/s) and memory bandwidth (GB/s) of one GPU model.

    ``bf16_tflops`` is the 16-bit tensor rate: bf16, or fp16 on GPUs without bf16 (T4, V100).
    """

    bf16_tflops: float
    fp32_tflops: float
    bandwidth_gbs: float


# Keyed by the model as torch.cuda.get_device_name() spells it, without the vendor and brand words.
GPU_PEAKS: dict[str, DevicePeak] = {
    # Hopper
    "H200": DevicePeak(989.0, 67.0, 4800.0),
    "GH200": DevicePeak(989.0, 67.0, 4000.0),  # 96 GB of HBM3
    "GH200 144G": DevicePeak(989.0, 67.0, 4900.0),  # HBM3e
    "H100": DevicePeak(989.0, 67.0, 3350.0),  # SXM5
    "H100 PCIe": DevicePeak(756.0, 51.0, 2000.0),
    "H100 NVL": DevicePeak(835.0, 60.0, 3900.0),
    # Ampere and Ada, data center and workstation
    "A100": DevicePeak(312.0, 19.5, 1555.0),  # 40 GB SXM4
    "A100-SXM4-80GB": DevicePeak(312.0, 19.5, 2039.0),
    "A100-PCIE-40GB": DevicePeak(312.0, 19.5, 1555.0),
    "A100 80GB PCIe": DevicePeak(312.0, 19.5, 1935.0),
    "A40": DevicePeak(149.7, 37.4, 696.0),
    "A10G": DevicePeak(70.0, 31.2, 600.0),
    "L40S": DevicePeak(362.0, 91.6, 864.0),
    "L40": DevicePeak(181.0, 90.5, 864.0),
    "L4": DevicePeak(121.0, 30.3, 300.0),
    "RTX A6000": DevicePeak(154.8, 38.7, 768.0),
    "RTX 6000 Ada Generation": DevicePeak(364.2, 91.1, 960.0),
    # GeForce, Ada
    "RTX 4090": DevicePeak(165.2, 82.6, 1008.0),
    "RTX 4080": DevicePeak(97.5, 48.7, 717.0),
    "RTX 4070 Ti": DevicePeak(80.2, 40.1, 504.0),
    "RTX 4070": DevicePeak(58.3, 29.1, 504.0),
    "RTX 4060 Ti": DevicePeak(44.1, 22.1, 288.0),
    "RTX 4060": DevicePeak(30.2, 15.1, 272.0),
    # GeForce, Ampere
    "RTX 3090 Ti": DevicePeak(80.0, 40.0, 1008.0),
    "RTX 3090": DevicePeak(71.0, 35.6, 936.0),
    "RTX 3080 Ti": DevicePeak(68.2, 34.1, 912.0),
    "RTX 3080": DevicePeak(59.5, 29.8, 760.0),  # the 10 GB card (the 12 GB one has the same name)
    "RTX 3070 Ti": DevicePeak(43.5, 21.7, 608.0),
    "RTX 3070": DevicePeak(40.6, 20.3, 448.0),
    "RTX 3060 Ti": DevicePeak(32.4, 16.2, 448.0),
    "RTX 3060": DevicePeak(25.5, 12.7, 360.0),  # the 12 GB card
    # Older
    "T4": DevicePeak(65.0, 8.1, 320.0),
    "V100": DevicePeak(125.0, 15.7, 900.0),  # SXM2
}

# Words after a model's name that make it another card than the table's (lower case).
_VARIANT_WORDS = frozenset({"ti", "super", "d", "nvl", "pcie", "laptop", "mobile", "max"})


def _matches(key: str, name: str) -> bool:
    """``key`` stands in ``name`` as whole words ("H200" is not in "GH200", "L4" not in "L40S"), and no
    word after it names a variant of the card ("RTX 4070 SUPER" is not an "RTX 4070")."""
    found = re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", name, flags=re.IGNORECASE)
    if found is None:
        return False
    after = re.findall(r"[a-z0-9]+", name[found.end() :].lower())
    return not _VARIANT_WORDS.intersection(after)


def peak_for_name(name: str) -> DevicePeak | None:
    """The peak of the GPU that ``torch.cuda.get_device_name`` calls ``name``, or None where it is not known.

    Of the keys that match, the longest wins: "NVIDIA A100-SXM4-80GB" is an "A100-SXM4-80GB", not an "A100".
    """
    found = [key for key in GPU_PEAKS if _matches(key, name)]
    return GPU_PEAKS[max(found, key=len)] if found else None


def device_peak(device: torch.device) -> DevicePeak | None:
    """The peak of a CUDA device (see :func:`peak_for_name`); None on a CPU."""
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))
