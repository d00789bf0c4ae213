"""Mixed precision: autocast in the right dtype for the device, a GradScaler only for fp16.

* CPU: autocast runs matrix multiplications in **bfloat16** (same exponent range as fp32, so
  no loss scaling is needed).
* CUDA: **bfloat16** where the GPU supports it (Ampere and newer), otherwise **float16**, which
  has a narrow exponent range: small gradients underflow to zero unless the loss is scaled
  up first, hence ``torch.amp.GradScaler``.

``MixedPrecision`` bundles the three decisions (dtype, autocast, scaler) so training loops
read the same on every device::

    mp = MixedPrecision(device)
    with mp.autocast():
        loss = model(x).loss
    mp.step(loss, optimizer, clip_grad_norm=1.0, parameters=model.parameters())
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch


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


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The autocast dtype the course uses on ``device``.

    >>> amp_dtype("cpu")
    torch.bfloat16
    """
    device = _as_device(device, available=False)  # a rule, answered for any device type
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
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
        self.device = _as_device(device, available=False)
        self.enabled = enabled
        self.dtype = amp_dtype(self.device) if dtype is None else dtype
        if not isinstance(self.dtype, torch.dtype) or self.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"mixed precision dtype must be torch.float16 or torch.bfloat16, got {self.dtype}")
        # Loss scaling is only needed (and only supported) for fp16 on a GPU.
        use_scaler = enabled and self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    def __repr__(self) -> str:
        return f"MixedPrecision(device={self.device}, dtype={self.dtype}, grad_scaler={self.scaler.is_enabled()})"

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
        """Backward, (unscale and) clip, optimizer step, scaler update, zero the gradients."""
        self.scaler.scale(loss).backward()
        if clip_grad_norm is not None:
            if parameters is None:
                raise ValueError("clip_grad_norm needs the model's parameters: pass parameters=model.parameters()")
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class PrecisionReport:
    device: str
    bf16: bool
    fp16: bool
    tf32: bool
    autocast_dtype: str
    grad_scaler: bool

    def __str__(self) -> str:
        yes = {True: "yes", False: "no"}
        return "\n".join(
            [
                f"device                 {self.device}",
                f"bfloat16 supported     {yes[self.bf16]}",
                f"float16 supported      {yes[self.fp16]}",
                f"TF32 matmuls           {yes[self.tf32]}",
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
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        bf16, fp16, tf32 = torch.cuda.is_bf16_supported(), True, major >= 8
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
    )
