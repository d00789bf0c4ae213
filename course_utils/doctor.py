"""``python -m course_utils.doctor`` (``make doctor``): is this machine ready for the course?

Prints a readable report — Python, library versions, devices, GPU and driver, mixed-precision
support, free memory and disk, each notebook's data — and exits non-zero with a specific fix
for each problem found. Instructors: ask every participant to run it before the workshop.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

MIN_PYTHON = (3, 10)
MIN_FREE_DISK_GB = 2.0
MIN_FREE_MEMORY_GB = 2.0
PACKAGES = ["torch", "torchvision", "transformers", "matplotlib", "jupyterlab", "tqdm", "numpy",
            "scikit-learn", "sacrebleu", "gymnasium", "nvidia-ml-py", "psutil", "filelock", "pillow"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # a warning is reported but does not fail the doctor


def _version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def run_checks() -> list[Check]:
    checks: list[Check] = []
    v = sys.version_info
    checks.append(Check("python", v >= MIN_PYTHON, f"{platform.python_version()} ({sys.executable})",
                        fix=f"install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ and run `make PYTHON=python3.12 lab`"))
    for package in PACKAGES:
        version = _version(package)
        checks.append(Check(package, version is not None, version or "not installed",
                            fix="run `make install` (or `pip install -e .` in the course folder)"))
    try:
        import torch
    except Exception as exc:  # a broken torch install is the most common workshop failure
        checks.append(Check("torch import", False, f"{type(exc).__name__}: {exc}",
                            fix="reinstall PyTorch: `rm -rf .venv && make install`"))
        return checks
    from .precision import precision_report
    from .runtime import get_device

    device = get_device()
    checks.append(Check("device", True, f"{device} ({torch.get_num_threads()} CPU threads)"))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            checks.append(Check(f"GPU {i}", True, f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                f"compute capability {props.major}.{props.minor}, CUDA {torch.version.cuda}"))
        try:
            import pynvml

            pynvml.nvmlInit()
            checks.append(Check("NVIDIA driver", True, str(pynvml.nvmlSystemGetDriverVersion())))
        except Exception as exc:
            checks.append(Check("NVIDIA driver", False, f"NVML failed: {exc}", warning=True,
                                fix="GPU monitoring needs the NVIDIA driver's NVML library; training still works"))
    else:
        cuda_note = "CPU-only build of PyTorch" if torch.version.cuda is None else f"PyTorch built for CUDA {torch.version.cuda}, no GPU visible"
        checks.append(Check("GPU", True, f"none ({cuda_note}); every notebook runs on the CPU"))
    report = precision_report(device)
    checks.append(Check("mixed precision", True, f"autocast {report.autocast_dtype}; bf16 {'yes' if report.bf16 else 'no'}, "
                        f"fp16 {'yes' if report.fp16 else 'no'}, GradScaler {'needed' if report.grad_scaler else 'not needed'}"))
    try:
        with torch.autocast(device_type=device.type, dtype=report_dtype(report)):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        checks.append(Check("autocast smoke test", True, "a matmul under autocast ran"))
    except Exception as exc:
        checks.append(Check("autocast smoke test", False, f"{type(exc).__name__}: {exc}",
                            fix="update PyTorch (`make install`) or run notebooks with mixed precision disabled"))
    checks.extend(_scaling_checks())
    import psutil

    free_mem = psutil.virtual_memory().available / 2**30
    checks.append(Check("free memory", free_mem >= MIN_FREE_MEMORY_GB, f"{free_mem:.1f} GiB available",
                        fix=f"close programs: the course needs {MIN_FREE_MEMORY_GB} GiB free"))
    repo = Path(__file__).resolve().parent.parent
    free_disk = shutil.disk_usage(repo).free / 2**30
    checks.append(Check("free disk", free_disk >= MIN_FREE_DISK_GB, f"{free_disk:.1f} GiB free at {repo}",
                        fix=f"free at least {MIN_FREE_DISK_GB} GiB of disk"))
    notebooks = sorted((repo / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    checks.append(Check("notebooks", bool(notebooks), f"{len(notebooks)} found in {repo / 'notebooks'}",
                        fix="run the doctor from a clone of the course repository", warning=not notebooks))
    from .datasets import data_sources

    for source in data_sources():
        name = source.__name__.rsplit(".", 1)[-1]
        try:
            ok, detail = source.available()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        used_by = ", ".join(getattr(source, "NOTEBOOKS", ()))
        checks.append(Check(f"data: {name}", ok, f"{detail}" + (f" (notebooks {used_by})" if used_by else ""),
                            fix=getattr(source, "FIX", "run `make install`")))
    try:
        importlib.import_module("ipykernel")
        checks.append(Check("jupyter kernel", True, "ipykernel importable"))
    except ImportError:
        checks.append(Check("jupyter kernel", False, "ipykernel missing", fix="run `make install`"))
    return checks


def _scaling_checks() -> list[Check]:
    """torch.distributed and its backends, the launch plan of notebook 15, and cold-cache measurements."""
    import torch.distributed as dist

    from .distributed import launch_plan
    from .loading import page_cache_eviction

    if not dist.is_available():
        return [Check("torch.distributed", False, "this PyTorch build has no torch.distributed", warning=True,
                      fix="notebook 15's multi-process runs need torch.distributed: install PyTorch from pytorch.org")]
    backends = [name for name, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available())) if ok]
    checks = [Check("torch.distributed", "gloo" in backends, f"backends: {', '.join(backends) or 'none'}",
                    fix="gloo is missing: reinstall PyTorch (`rm -rf .venv && make install`)", warning=True)]
    try:
        checks.append(Check("launch plan", True, str(launch_plan(2)).removeprefix("launch plan: ")))
    except Exception as exc:  # a plan that cannot be made is worth a line, not a crash
        checks.append(Check("launch plan", False, f"{type(exc).__name__}: {exc}", warning=True,
                            fix="notebook 15 cannot plan its torchrun jobs here; see its section 5"))
    eviction = page_cache_eviction()
    checks.append(Check("page cache eviction", eviction.supported, eviction.reason, warning=True,
                        fix="notebook 15 measures warm reads only on this system (no posix_fadvise)"))
    return checks


def report_dtype(report):
    """The ``torch.dtype`` a :class:`~course_utils.precision.PrecisionReport` names."""
    import torch  # imported here: the doctor runs (and says what is missing) without torch

    from .checks import check_instance
    from .precision import PrecisionReport

    check_instance("report", report, PrecisionReport)
    return getattr(torch, report.autocast_dtype)


def main() -> int:
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    print("Attention course — doctor\n")
    for c in checks:
        mark = "ok  " if c.ok else ("warn" if c.warning else "FAIL")
        print(f"  [{mark}] {c.name:<{width}}  {c.detail}")
    problems = [c for c in checks if not c.ok and not c.warning]
    warnings = [c for c in checks if not c.ok and c.warning]
    print()
    for c in warnings:
        print(f"warning: {c.name}: {c.fix}")
    if problems:
        print(f"{len(problems)} problem(s) to fix before the course:")
        for c in problems:
            print(f"  - {c.name}: {c.fix}")
        return 1
    print("All checks passed: this machine is ready for the course.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
