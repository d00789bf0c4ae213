"""Mixed precision: autocast in the right dtype for the device, a GradScaler only for fp16.

* CPU: autocast runs matrix multiplications in **bfloat16** (same exponent range as fp32, so
  no loss scaling is needed).
* CUDA: **bfloat16** where the GPU computes it natively (compute capability 8.0 and newer:
  A100, RTX 30xx, H100, ...), otherwise **float16** (V100 7.0, T4 and RTX 20xx 7.5), which
  has a narrow exponent range: small gradients underflow to zero unless the loss is scaled
  up first, hence ``torch.amp.GradScaler``. Recent PyTorch counts *emulated* bf16 on older
  cards as "supported"; emulated bf16 is slow, so the course asks for native support only.
* TF32: on CUDA, :func:`enable_tf32` lets float32 matrix products use TensorFloat-32 tensor
  cores (Ampere and newer; 10 mantissa bits instead of 23, float32's range).
  ``setup_notebook`` calls it once when the notebook runs on a GPU; nothing else sets it.

``MixedPrecision`` bundles the three decisions (dtype, autocast, scaler) so training loops
read the same on every device::

    mp = MixedPrecision(device)
    with mp.autocast():
        loss = model(x).loss
    mp.step(loss, optimizer, clip_grad_norm=1.0, parameters=model.parameters())
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .checks import (
    check_bool,
    check_float_tensor,
    check_instance,
    check_real,
    describe,
)


def _as_device(device: object, available: bool = True) -> torch.device:
    """``device`` as a torch.device that exists here, or a ValueError/TypeError saying why not."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a device name such as 'cpu' or 'cuda', or a torch.device, "
                        f"got {type(device).__name__} {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be such as 'cpu', 'cuda' or 'mps', got {device!r}") from exc
    if available and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"CUDA is not available here, got device {str(device)!r}; use 'cpu'")
    if available and device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"MPS is not available here, got device {str(device)!r}; use 'cpu'")
    return device


def cuda_bf16_native(device: torch.device | str = "cuda") -> bool:
    """True when the CUDA (or ROCm) GPU ``device`` computes bfloat16 in hardware.

    Uses ``torch.cuda.is_bf16_supported(including_emulation=False)`` where the installed
    PyTorch has that argument, and the compute capability (8.0 or newer) where it does not:
    without it, current PyTorch answers True on a T4 or V100, whose bf16 is emulated and slow.

    >>> cuda_bf16_native("cpu")
    False
    """
    device = _as_device(device, available=False)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True  # every GPU ROCm supports has bf16 units
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index == torch.cuda.current_device() and _has_emulation_argument():
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return torch.cuda.get_device_capability(index)[0] >= 8


def _has_emulation_argument() -> bool:
    try:
        return "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def enable_tf32() -> None:
    """Let float32 matrix products on CUDA use TF32 tensor cores (the course's one switch for it).

    ``torch.set_float32_matmul_precision("high")``: float32 inputs and outputs, products computed
    with 10-bit mantissas on Ampere and newer GPUs (on older GPUs and on CPUs it changes nothing).
    cuDNN convolutions use TF32 by default already.

    >>> enable_tf32(); torch.get_float32_matmul_precision()
    'high'
    >>> torch.set_float32_matmul_precision("highest")   # back to the default for the other doctests
    """
    torch.set_float32_matmul_precision("high")


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The autocast dtype the course uses on ``device``.

    CPU: bfloat16. CUDA: bfloat16 when the GPU has native bf16 (compute capability 8.0+),
    float16 (with a ``GradScaler``) on older GPUs. MPS: float16.

    >>> amp_dtype("cpu")
    torch.bfloat16
    """
    device = _as_device(device, available=False)  # a rule, answered for any device type
    if device.type == "cuda":
        return torch.bfloat16 if cuda_bf16_native(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    raise ValueError(f"no mixed-precision rule for device type {device.type!r}; expected cpu, cuda or mps")


class MixedPrecision:
    """Autocast + (only for fp16) a ``torch.amp.GradScaler``, for one device.

    >>> mp = MixedPrecision("cpu")
    >>> mp
    MixedPrecision(device=cpu, dtype=torch.bfloat16, grad_scaler=False)
    >>> with mp.autocast():
    ...     y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    >>> y.dtype
    torch.bfloat16
    """

    def __init__(self, device: torch.device | str, enabled: bool = True, dtype: torch.dtype | None = None):
        check_bool("enabled", enabled)
        self.device = _as_device(device, available=False)
        self.enabled = enabled
        self.dtype = amp_dtype(self.device) if dtype is None else dtype
        if not isinstance(self.dtype, torch.dtype) or self.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"mixed precision dtype must be torch.float16 or torch.bfloat16, got {self.dtype}")
        # Loss scaling is only needed (and only supported) for fp16 on a GPU.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.needs_grad_scaler)

    def __repr__(self) -> str:
        return f"MixedPrecision(device={self.device}, dtype={self.dtype}, grad_scaler={self.scaler.is_enabled()})"

    @property
    def needs_grad_scaler(self) -> bool:
        """True for float16 on a GPU: the one case where small gradients would underflow unscaled."""
        return self.enabled and self.dtype == torch.float16 and self.device.type == "cuda"

    def autocast(self):
        """A ``torch.autocast`` context for this device and dtype (a no-op when disabled)."""
        if not self.enabled:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        clip_grad_norm: float | None = None,
        parameters: Iterable[torch.nn.Parameter] | None = None,
    ) -> None:
        """Backward, (unscale and) clip, optimizer step, scaler update, zero the gradients.

        ``loss`` is a one-element float tensor on this device type; ``clip_grad_norm`` a finite
        norm > 0. A NaN or infinite loss is not checked here, on any device: reading the loss
        would make the CPU wait for a GPU at every step. The training loops read their losses in
        blocks and stop at the first non-finite one with a ``NonFiniteLossError`` that names the
        step (on a GPU, ``GradScaler`` also skips a step whose gradients are not finite).
        """
        self._check_loss(loss)
        check_instance("optimizer", optimizer, torch.optim.Optimizer)
        if clip_grad_norm is not None:
            check_real("clip_grad_norm", clip_grad_norm, 0.0, low_open=True)
        if parameters is not None:
            parameters = _parameter_list(parameters)
        self.scaler.scale(loss).backward()
        if clip_grad_norm is not None:
            if parameters is None:
                raise ValueError("clip_grad_norm needs the model's parameters: pass parameters=model.parameters()")
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)


    def _check_loss(self, loss: object) -> None:
        check_float_tensor("loss", loss)
        if loss.numel() != 1:
            raise ValueError(f"loss must be a single number (a one-element tensor such as a mean), "
                             f"got {describe(loss)}")
        if loss.device.type != self.device.type:
            raise ValueError(f"loss must be on this MixedPrecision's device type {self.device.type!r}, "
                             f"got {describe(loss)} on {loss.device}")


def _parameter_list(parameters: object) -> list[torch.Tensor]:
    """``parameters`` (a list, or ``model.parameters()``) as a non-empty list of tensors."""
    if isinstance(parameters, (str, bytes, torch.Tensor)) or not isinstance(parameters, Iterable):
        raise TypeError(f"parameters must be the model's parameters (model.parameters()), got "
                        f"{describe(parameters)}")
    params = list(parameters)
    if not params:
        raise ValueError("parameters must hold the model's parameters, got none (an empty list: "
                         "nothing would be clipped)")
    for i, p in enumerate(params):
        check_instance(f"parameters[{i}]", p, torch.Tensor)
    return params


@dataclass(frozen=True)
class PrecisionReport:
    device: str
    bf16: bool
    fp16: bool
    tf32: bool
    autocast_dtype: str
    grad_scaler: bool
    tf32_enabled: bool = False
    capability: str = ""

    def __str__(self) -> str:
        yes = {True: "yes", False: "no"}
        tf32 = yes[self.tf32] + ((", on" if self.tf32_enabled else ", off") if self.tf32 else "")
        lines = [f"device                 {self.device}"]
        if self.capability:
            lines.append(f"compute capability     {self.capability}")
        return "\n".join(
            lines
            + [
                f"bfloat16 supported     {yes[self.bf16]}",
                f"float16 supported      {yes[self.fp16]}",
                f"TF32 matmuls           {tf32}",
                f"course autocast dtype  {self.autocast_dtype}",
                f"GradScaler needed      {yes[self.grad_scaler]}",
            ]
        )


def precision_report(device: torch.device | str = "cpu") -> PrecisionReport:
    """What this machine supports for mixed precision on ``device``.

    >>> print(precision_report("cpu").autocast_dtype)
    bfloat16
    """
    device = _as_device(device)
    capability = ""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"{major}.{minor}"
        bf16, fp16, tf32 = cuda_bf16_native(device), True, major >= 8  # bf16: native, not emulated
    elif device.type == "mps":
        bf16, fp16, tf32 = False, True, False
    else:
        # CPU autocast supports bf16 everywhere; fp16 CPU matmuls exist but are slow emulation.
        bf16, fp16, tf32 = True, False, False
    dtype = amp_dtype(device)
    return PrecisionReport(
        device=str(device),
        bf16=bf16,
        fp16=fp16,
        tf32=tf32,
        autocast_dtype=str(dtype).replace("torch.", ""),
        grad_scaler=dtype == torch.float16 and device.type == "cuda",
        tf32_enabled=tf32 and torch.get_float32_matmul_precision() != "highest",
        capability=capability,
    )
