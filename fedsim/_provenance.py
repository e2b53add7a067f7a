"""What ran: package versions, device, CPU count, git commit, command line, times.

Collected once per run and stored in the run folder (``provenance.json``) and in
``summary.json``, so a result can always be traced to the code and machine that
made it.  Nothing here imports an optional library that is not already loaded:
versions come from the installed distributions' metadata.
"""
import ctypes
import datetime
import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["collect", "finish", "device_name", "utc_now"]

# Distributions whose versions are recorded when installed (sketchgrad itself is recorded
# from the imported code, which need not be the installed copy).
_PACKAGES = ("numpy", "torch", "numba", "cupy-cuda12x", "cupy-cuda13x", "cupy", "scikit-learn", "matplotlib",
             "tensorboard", "flwr")


def utc_now():
    """The current time as an ISO 8601 UTC string."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version(dist):
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model():
    """The CPU's model name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device):
    """A readable name of a torch device: the GPU's name for CUDA, the CPU model otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"CPU: {_cpu_model()}"


def _driver_from_libcuda():
    """The CUDA driver version (e.g. 12040) read from libcuda with ctypes, or None."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        try:
            if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
                return int(version.value)
        except AttributeError:
            pass
    return None


def _cuda_versions(device):
    """CUDA runtime (torch's) and driver versions; the driver only when the run uses a GPU."""
    import torch

    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return {"cuda_runtime": torch.version.cuda, "cuda_driver": None}
    driver = None
    if "cupy" in sys.modules or _version("cupy-cuda12x") or _version("cupy-cuda13x"):
        try:
            import cupy
            driver = int(cupy.cuda.runtime.driverGetVersion())
        except Exception:  # no usable CuPy: ask libcuda directly below
            driver = None
    if driver is None:
        driver = _driver_from_libcuda()
    return {"cuda_runtime": torch.version.cuda, "cuda_driver": driver}


def _git_commit():
    """``(commit, dirty)`` of the checkout holding fedsim, or ``(None, None)`` outside one."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        # An installed copy may sit inside someone else's repository: only our own checkout counts.
        if not top or Path(top, "fedsim", Path(__file__).name).resolve() != Path(__file__).resolve():
            return None, None
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


@functools.lru_cache(maxsize=1)
def _static():
    """The parts of a record that cannot change within a process (git is asked once)."""
    import sketchlib

    commit, dirty = _git_commit()
    packages = {"sketchgrad": sketchlib.__version__}
    packages.update({name: v for name in _PACKAGES if (v := _version(name)) is not None})
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "code_path": str(Path(__file__).resolve().parents[1]),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def collect(device="cpu", argv=None):
    """The provenance record of a run on ``device``, started now.

    Parameters
    ----------
    device : str or torch.device
    argv : list of str, optional
        The command line (default ``sys.argv``).

    Returns
    -------
    dict
        JSON-serialisable: ``python``, ``platform``, ``packages`` (name -> version;
        ``sketchgrad`` is the imported code's version), ``code_path`` (where it was
        imported from), ``device``, ``device_name``, ``cuda_runtime``, ``cuda_driver``,
        ``cpu_count``, ``cpu_affinity``, ``torch_threads``, ``git_commit``,
        ``git_dirty``, ``command``, ``started`` (ISO 8601 UTC); :func:`finish` adds ``ended``.
    """
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = os.cpu_count()
    record = dict(_static())
    record["packages"] = dict(record["packages"])
    record.update({
        "device": str(device),
        "device_name": device_name(device),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "command": list(sys.argv if argv is None else argv),
        "started": utc_now(),
    })
    record.update(_cuda_versions(device))
    return record


def finish(record):
    """Stamp a record from :func:`collect` with its end time (``ended``); returns it.

    Parameters
    ----------
    record : dict

    Returns
    -------
    dict
        ``record``, changed in place.
    """
    record["ended"] = utc_now()
    return record
