"""What ran: package versions, device, CPU count, git commit, command line, times.

Collected once per run and stored in the run folder (``provenance.json``) and in
``summary.json``, so a result can always be traced to the code and machine that
made it.  Nothing here imports an optional library that is not already loaded:
versions come from the installed distributions' metadata.
"""
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["collect", "device_name", "utc_now"]

_PACKAGES = ("sketchgrad", "numpy", "torch", "numba", "cupy-cuda12x", "cupy-cuda13x", "cupy", "flwr")


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


def _cuda_versions(device):
    """CUDA runtime (torch's) and driver versions when the run uses a GPU."""
    import torch

    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return {"cuda_runtime": torch.version.cuda, "cuda_driver": None}
    driver = None
    if "cupy" in sys.modules or _version("cupy-cuda12x") or _version("cupy-cuda13x"):
        try:
            import cupy
            driver = cupy.cuda.runtime.driverGetVersion()
        except Exception:  # no usable CuPy: the driver version stays unknown
            driver = None
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


def collect(device="cpu", argv=None):
    """The provenance record of a run on ``device``.

    Parameters
    ----------
    device : str or torch.device
    argv : list of str, optional
        The command line (default ``sys.argv``).

    Returns
    -------
    dict
        JSON-serialisable: ``python``, ``platform``, ``packages`` (name -> version),
        ``device``, ``device_name``, ``cuda_runtime``, ``cuda_driver``, ``cpu_count``,
        ``cpu_affinity``, ``git_commit``, ``git_dirty``, ``command``, ``started``.
    """
    commit, dirty = _git_commit()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = os.cpu_count()
    record = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: v for name in _PACKAGES if (v := _version(name)) is not None},
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "git_commit": commit,
        "git_dirty": dirty,
        "command": list(sys.argv if argv is None else argv),
        "started": utc_now(),
    }
    record.update(_cuda_versions(device))
    return record
