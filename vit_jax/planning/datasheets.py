"""The one table of accelerator figures: per-chip dense bf16 peak FLOP/s, HBM capacity and HBM
bandwidth, and the two links collectives use, each with its source. MFU (run/metrics.py), the
dry run's step-time model and the TPU slice parser (topology.py) all read it; a device kind not
listed gets no MFU, with a reason.

Link figures are what one chip can send per second:
  - ici_bytes_per_s: inside a slice (TPU ICI; NVLink inside a GPU node). Half the vendor's
    bidirectional per-chip figure, which is what Google's own "all-reduce bandwidth per Pod"
    rows come to per chip (v5e: 51.2 TB/s / 256 chips = 200 GB/s = 400 GBps bidirectional / 2).
  - dcn_bytes_per_s: across slices (TPU data-centre network; InfiniBand/RoCE between GPU nodes),
    per chip: the host's or Pod's network bandwidth over its chips.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

GIB = 1 << 30
GB = 10 ** 9


@dataclasses.dataclass(frozen=True)
class Datasheet:
  """Per-chip figures of one accelerator as its vendor publishes them."""
  kind: str                         # device_kind prefix JAX reports ('TPU v5 lite', 'NVIDIA H100')
  peak_bf16_flops: float            # dense bf16 FLOP/s per chip
  hbm_bytes: Optional[int]          # memory capacity per chip
  hbm_bytes_per_s: Optional[float]  # memory bandwidth per chip
  source: str
  ici_bytes_per_s: Optional[float] = None  # per-chip send bandwidth inside a slice / node
  dcn_bytes_per_s: Optional[float] = None  # per-chip share of the network between slices / nodes
  link_source: str = ""


_TPU = "cloud.google.com/tpu/docs"
# TPU generations by name (topology.py's slice names use these keys).
TPU: dict[str, Datasheet] = {
    "v2": Datasheet("TPU v2", 45e12, 16 * GIB, 700e9, f"{_TPU}/system-architecture-tpu-vm"),
    "v3": Datasheet("TPU v3", 123e12, 32 * GIB, 900e9, f"{_TPU}/system-architecture-tpu-vm"),
    "v4": Datasheet("TPU v4", 275e12, 32 * GIB, 1200e9, f"{_TPU}/v4", 1.1e15 / 4096, None,
                    f"{_TPU}/v4: all-reduce bandwidth per Pod 1.1 PB/s over 4096 chips; no DCN "
                    "figure published (a multi-slice v4 plan gets no DCN term)"),
    "v5e": Datasheet("TPU v5 lite", 197e12, 16 * GIB, 819e9, f"{_TPU}/v5e", 400e9 / 2,
                     6.4e12 / 8 / 256, f"{_TPU}/v5e: ICI 400 GBps bidirectional per chip; data "
                     "center network 6.4 Tbps per 256-chip Pod"),
    "v5p": Datasheet("TPU v5", 459e12, 95 * GIB, 2765e9, f"{_TPU}/v5p", 1200e9 / 2, 50e9 / 8,
                     f"{_TPU}/v5p: ICI 1200 GBps bidirectional per chip; DCN 50 Gbps per chip"),
    "v6e": Datasheet("TPU v6 lite", 918e12, 32 * GIB, 1640e9, f"{_TPU}/v6e", 800e9 / 2,
                     25.6e12 / 8 / 256, f"{_TPU}/v6e: ICI 800 GBps bidirectional per chip; data "
                     "center network 25.6 Tbps per 256-chip Pod"),
}
# Other spellings of a TPU device kind JAX has reported.
TPU_KIND_ALIASES = {"TPU v5e": "v5e", "TPU v5p": "v5p", "TPU v6e": "v6e"}

_NV = "nvidia.com datasheet (dense, without sparsity)"
_NVL = ("nvidia.com: NVLink 900 GB/s bidirectional per GPU / 2; one 400 Gb/s NIC per GPU "
        "(DGX/HGX H100-class nodes)")
GPU: dict[str, Datasheet] = {
    "H200": Datasheet("NVIDIA H200", 989e12, 141 * GB, 4800e9, f"{_NV}: H200 SXM",
                      900e9 / 2, 400e9 / 8, _NVL),
    "H100": Datasheet("NVIDIA H100", 989e12, 80 * GB, 3350e9, f"{_NV}: H100 SXM",
                      900e9 / 2, 400e9 / 8, _NVL),
    "GH200": Datasheet("NVIDIA GH200", 989e12, 96 * GB, 4000e9, f"{_NV}: GH200",
                       900e9 / 2, 400e9 / 8, _NVL),
    "B200": Datasheet("NVIDIA B200", 2250e12, 180 * GB, 8000e9, f"{_NV}: HGX B200",
                      1800e9 / 2, 400e9 / 8, "nvidia.com: NVLink 5 1.8 TB/s bidirectional per "
                      "GPU / 2; one 400 Gb/s NIC per GPU (HGX B200)"),
    "A100": Datasheet("NVIDIA A100", 312e12, 80 * GB, 2039e9, f"{_NV}: A100 80GB SXM",
                      600e9 / 2, 200e9 / 8, "nvidia.com: NVLink 600 GB/s bidirectional per GPU "
                      "/ 2; one 200 Gb/s NIC per GPU (DGX A100)"),
    "L4": Datasheet("NVIDIA L4", 121e12, 24 * GB, 300e9, f"{_NV}: L4"),
    "A10G": Datasheet("NVIDIA A10G", 125e12, 24 * GB, 600e9,
                      "aws.amazon.com/ec2/instance-types/g5"),
    "V100": Datasheet("Tesla V100", 125e12, 32 * GB, 900e9, f"{_NV}: V100 SXM2 (tensor FP16)"),
}

# device_kind prefix -> datasheet; the longest matching prefix wins ('TPU v5 lite' before 'TPU v5').
BY_DEVICE_KIND: dict[str, Datasheet] = {
    **{s.kind: s for s in TPU.values()},
    **{kind: TPU[gen] for kind, gen in TPU_KIND_ALIASES.items()},
    **{s.kind: s for s in GPU.values()},
}


def for_kind(device_kind: str) -> Optional[Datasheet]:
  """The datasheet of a JAX device kind ('NVIDIA H100 80GB HBM3' -> H100), or None."""
  for name in sorted(BY_DEVICE_KIND, key=len, reverse=True):
    if device_kind.startswith(name):
      return BY_DEVICE_KIND[name]
  return None


def peak_flops_per_device(device: Any = None) -> tuple[Optional[float], str]:
  """(peak bf16 FLOP/s of one device, or None, and a reason when None)."""
  if device is None:
    import jax  # pylint: disable=g-import-not-at-top  (this table is read without JAX too)
    device = jax.devices()[0]
  sheet = for_kind(device.device_kind)
  if sheet is not None:
    return sheet.peak_bf16_flops, ""
  return None, (f"MFU omitted: no peak FLOP/s known for device kind {device.device_kind!r} "
                f"(platform {device.platform}); add it to vit_jax/planning/datasheets.py.")
