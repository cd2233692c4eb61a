"""A GPU's name finds its own peak: not a shorter name inside it ("H200" in "GH200"), not the card it is a
variant of ("RTX 3090" for an "RTX 3090 Ti"), and nothing for a card the table does not know."""

from __future__ import annotations

import pytest
import torch

from muomni.bench.peaks import GPU_PEAKS, device_peak, peak_for_name


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA GH200 144G HBM3e", "GH200 144G"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada Generation"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 4070 Ti", "RTX 4070 Ti"),
        ("NVIDIA GeForce RTX 4070", "RTX 4070"),
        ("NVIDIA GeForce RTX 3090 Ti", "RTX 3090 Ti"),
        ("NVIDIA GeForce RTX 3090", "RTX 3090"),
        ("NVIDIA GeForce RTX 3060", "RTX 3060"),
        ("NVIDIA GeForce RTX 3060 Ti", "RTX 3060 Ti"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100"),
    ],
)
def test_a_known_gpu_gets_its_own_peak(name: str, key: str) -> None:
    assert peak_for_name(name) is GPU_PEAKS[key]


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA GeForce RTX 3060 Laptop GPU",  # a laptop part runs at its maker's power limit
        "NVIDIA GeForce RTX 4070 SUPER",
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 4080 Laptop GPU",
        "NVIDIA H200 NVL",
        "Tesla V100-PCIE-16GB",
        "Quadro RTX 6000",  # Turing, not the Ada card
        "NVIDIA GeForce GTX 1080",
        "NVIDIA B200",
        "",
    ],
)
def test_an_unknown_gpu_or_a_variant_gets_none(name: str) -> None:
    assert peak_for_name(name) is None


def test_every_key_finds_itself() -> None:
    # A key that a longer key's name also matches must lose to it: each name as the table spells it.
    for key, peak in GPU_PEAKS.items():
        assert peak_for_name(f"NVIDIA {key}") is peak, key


def test_a_cpu_has_no_peak() -> None:
    assert device_peak(torch.device("cpu")) is None
