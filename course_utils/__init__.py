"""course_utils: what the notebooks of "Attention Mechanisms, from Scratch to Scale" share.

The modules, in the order the course meets them:

* ``runtime`` — ``setup_notebook``, ``get_device``, ``seed_everything``, ``fast_mode``, ``by_mode``
* ``timing`` — ``benchmark`` (torch.utils.benchmark), ``compare``, ``CudaTimer``
* ``precision`` — ``MixedPrecision`` (autocast + GradScaler), ``precision_report``
* ``monitor`` — ``Monitor`` (CPU/RSS via psutil, GPU via NVML)
* ``plotting`` — ``plot_attention``, ``plot_attention_overlay``, ``plot_learning_curves``
* ``results`` — ``record_result`` (asserted headline numbers, ``reports/metrics.json``)
* ``training`` — ``train_steps`` (progress bar, NaN guard, Ctrl-C keeps your work)
* ``attention``, ``positional``, ``transformer`` — the reference implementations
* ``efficient``, ``triton_attention`` — tiled ("flash") attention, KV cache, grouped-query attention
* ``seq2seq``, ``vit``, ``captioning``, ``rl``, ``distributed`` — the models of notebooks 10–15
* ``loading`` — one dataset in four storage layouts, read warm and cold (notebook 15);
  ``process_guard`` — commands whose processes all end with them (``torchrun`` from a notebook)
* ``datasets`` — offline data (generated, or shipped by a dependency); ``download`` — checksummed,
  atomic downloads for learners who are online; ``checkpoint`` — safe save/load
* ``exercises`` — ``check`` and ``solution``
* ``doctor`` — ``python -m course_utils.doctor``
"""

from __future__ import annotations

from .results import record_result
from .runtime import by_mode, fast_mode, get_device, seed_everything, setup_notebook
from .timing import benchmark, compare

__all__ = [
    "benchmark",
    "by_mode",
    "compare",
    "fast_mode",
    "get_device",
    "record_result",
    "seed_everything",
    "setup_notebook",
]
__version__ = "0.1.0"
