"""Precision, decided once per device and passed down: nothing else in the course picks a dtype.

    resolve_precision(settings, device)  -> Precision

On a GPU without bf16 (Colab's T4) the post's bf16 compute falls back to fp16,
with a one-line notice. On a CPU every dtype is what the settings say: the CPU
profiles say fp32, because bf16 matmuls are emulated on CPUs without AVX512-BF16
(about 45 times slower than fp32 on an AVX2-only machine). A bf16 run on a CPU
is only ever an explicit choice, such as chapter 3's frozen-adapter demonstration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .settings import PrecisionSettings

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "uint8": torch.uint8}


@dataclass(frozen=True)
class Precision:
    """Dtypes resolved for one device.

    weights   dtype of the float (non-quantised) weights as loaded
    compute   dtype the 4-bit layers dequantise to for their matmuls
    adapter   dtype of the LoRA weights while training, on disk and on reload
    mixed_precision   the trainer's autocast: "no", "fp16" or "bf16"
    quant_storage     dtype 4-bit weights are packed into (uint8, or a float dtype for FSDP)
    notes     what the resolution changed, one line each (printed once when loading)
    """

    device: str
    weights: torch.dtype
    compute: torch.dtype
    adapter: torch.dtype
    mixed_precision: str
    quant_storage: torch.dtype = torch.uint8
    notes: tuple[str, ...] = ()

    @property
    def uses_bf16(self) -> bool:
        """Whether anything computes in bf16 (the CPU profiles must say no)."""
        return torch.bfloat16 in (self.weights, self.compute, self.adapter) or self.mixed_precision == "bf16"

    def describe(self) -> str:
        names = {v: k for k, v in TORCH_DTYPES.items()}
        return (f"{self.device}: weights {names[self.weights]}, 4-bit compute {names[self.compute]}, "
                f"adapters {names[self.adapter]}, mixed precision {self.mixed_precision}")


def gpu_has_bf16() -> bool:
    """Whether the GPU computes in bf16 in hardware (compute capability 8.0 and up). torch's
    default answer counts emulation too and says yes on a T4 (sm_75), where the post's bf16
    must fall back to fp16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(settings: PrecisionSettings, device: str, bf16_supported: bool | None = None) -> Precision:
    """The dtypes a run uses on `device`.

    `bf16_supported` says whether the GPU has bf16 (asked from torch when None);
    it is an argument so that the T4 fallback can be tested without a T4.
    """
    notes: list[str] = []
    compute, mixed = settings.compute_dtype, settings.mixed_precision
    if device == "cuda":
        if bf16_supported is None:
            bf16_supported = gpu_has_bf16()
        if not bf16_supported and "bf16" in (compute, mixed):
            notes.append("note: this GPU has no bfloat16; 4-bit layers compute in float16 instead (as on a Colab T4).")
            compute = "fp16" if compute == "bf16" else compute
            mixed = "fp16" if mixed == "bf16" else mixed
        weights = compute  # on a GPU the float weights are held in the compute dtype
    else:
        weights = "fp32"  # a CPU holds float weights in fp32; only an explicit compute_dtype says otherwise
        if compute != "fp32":
            weights = compute
    if settings.quant_storage != "uint8":
        weights = settings.quant_storage  # FSDP flattens 4-bit and float weights together: one dtype for both
    adapter = settings.adapter_dtype
    return Precision(device, TORCH_DTYPES[weights], TORCH_DTYPES[compute], TORCH_DTYPES[adapter], mixed,
                     TORCH_DTYPES[settings.quant_storage], tuple(notes))


def for_profile(profile) -> Precision:
    """The precision a profile's runs use on the profile's device."""
    return resolve_precision(profile.precision, profile.device)


# For a model loaded by name outside any profile (tools, tests): the CPU in fp32.
CPU_FP32 = resolve_precision(PrecisionSettings(compute_dtype="fp32"), "cpu")
