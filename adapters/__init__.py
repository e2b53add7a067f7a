"""Framework adapters for sketchlib: torch tensors, any DLPack array, torch.distributed.

Submodules are imported on first use (``adapters.torch`` imports torch;
``import adapters`` alone imports nothing beyond this file):

- :mod:`adapters.dlpack`: any ``__dlpack__`` producer in, NumPy/CuPy (DLPack) out.
- :mod:`adapters.torch`: tensors and models in, tensors out, on torch's CUDA stream.
- :mod:`adapters.distributed`: in-place all-reduce of sketches over torch.distributed.
"""
import importlib

__all__ = ["dlpack", "torch", "distributed"]

# fedsim reads this line (without importing) to tell this package from other distributions'
# packages named ``adapters`` (e.g. AdapterHub's); keep it as it is.
__distribution__ = "sketchgrad"


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
