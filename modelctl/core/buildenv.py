"""The build environment of a pipeline run: what a trained artifact's bytes depend on besides
the code, the params and the data.

Two libraries choose their numeric kernels from the CPU when they load, and the kernels round
differently (summation order, FMA), so the same fit gives other bytes on another CPU:

- OpenBLAS (bundled by numpy and by scipy, built with DYNAMIC_ARCH) picks a core such as
  SkylakeX, Haswell or Sandybridge, unless ``OPENBLAS_CORETYPE`` names one. It does not check
  that the CPU supports a forced core, so `missing_cpu_features` does.
- numpy dispatches its SIMD loops (ufuncs, sorts) to the best level the CPU has above its
  baseline; ``NPY_ENABLE_CPU_FEATURES`` restricts them to the ones listed (and raises when the
  CPU lacks one). It cannot be combined with ``NPY_DISABLE_CPU_FEATURES``.

Both are read once, when the library loads, so a stage pins them before importing numpy
(`pipeline/__main__.py`). Sources: numpy's "CPU build options / Runtime dispatch" reference and
OpenBLAS's driver/others/dynamic.c (``force_coretype``).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

X86_64 = "x86_64"
# One thread: OpenMP (HistGradientBoosting) and BLAS split sums by thread count.
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# x86-64-v3 (AVX2, FMA): every Intel CPU since Haswell (2013) and AMD since Zen. The Haswell
# core is the one churn v1.0.0 was built with; the registered fraud-detection versions give
# the same bytes with it.
X86_64_KERNELS = {"OPENBLAS_CORETYPE": "Haswell", "NPY_ENABLE_CPU_FEATURES": "X86_V3"}
# Caller settings that would contradict the pins (numpy refuses ENABLE and DISABLE together).
CLEARED = ("NPY_DISABLE_CPU_FEATURES",)
# /proc/cpuinfo flags the x86-64-v3 kernels execute; without them the forced core would crash.
X86_64_V3_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe")
# The packages the stages import whose code computes the bytes (pyproject's `pipeline` extra):
# the numerics, and each format's library (modelctl/core/formats; protobuf writes ONNX's bytes).
PACKAGES = (
    "numpy",
    "scipy",
    "scikit-learn",
    "skops",
    "threadpoolctl",
    "xgboost-cpu",
    "lightgbm",
    "onnx",
    "skl2onnx",
    "protobuf",
)
CPUINFO = Path("/proc/cpuinfo")


def machine() -> str:
    """The machine architecture as Python reports it (`x86_64`, `aarch64`, `arm64`)."""
    return platform.machine()


def pins(arch: str | None = None) -> dict[str, str]:
    """The environment a stage runs under on `arch` (default: this machine).

    Kernel choices are named only for x86-64; elsewhere only the thread count is pinned, and
    the record's `machine` says the bytes come from another architecture.
    """
    kernels = X86_64_KERNELS if (arch or machine()) == X86_64 else {}
    return {**kernels, **THREADS}


def pinned_environ(base: Mapping[str, str], settings: Mapping[str, str]) -> dict[str, str]:
    """`base` (a process environment) with `settings` applied and contradicting variables removed."""
    return {**{k: v for k, v in base.items() if k not in CLEARED}, **settings}


def applied(environ: Mapping[str, str], settings: Mapping[str, str]) -> bool:
    """Whether `environ` holds exactly these settings and nothing that contradicts them."""
    return all(environ.get(k) == v for k, v in settings.items()) and not any(k in environ for k in CLEARED)


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where the file does not exist."""
    try:
        text = cpuinfo.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def missing_cpu_features(settings: Mapping[str, str], flags: set[str] | None = None) -> list[str]:
    """The CPU flags the pinned x86-64 kernels need and this CPU lacks (empty when unknown)."""
    if not any(k in settings for k in X86_64_KERNELS):
        return []
    found = cpu_flags() if flags is None else flags
    return [] if found is None else [f for f in X86_64_V3_FLAGS if f not in found]


def package_versions() -> dict[str, str]:
    """Installed versions of `PACKAGES` ("absent" for one not installed)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def current(settings: Mapping[str, str] | None = None) -> dict[str, Any]:
    """This interpreter's build environment, shaped as `schema.BuildEnvironment`."""
    return {
        "python": platform.python_version(),
        "machine": machine(),
        "packages": package_versions(),
        "kernels": dict(pins() if settings is None else settings),
    }


def differences(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded build environment and this one, as short phrases
    ('numpy 2.4.6 recorded, 2.5.0 here'); both are shaped as `current()` returns."""
    found = [
        f"{key} {recorded[key]} recorded, {here.get(key)} here"
        for key in ("machine", "python")
        if key in recorded and recorded[key] != here.get(key)
    ]
    packages = here.get("packages", {})
    found += [
        f"{name} {version} recorded, {packages.get(name, 'absent')} here"
        for name, version in recorded.get("packages", {}).items()
        if packages.get(name, "absent") != version
    ]
    return found
