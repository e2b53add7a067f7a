"""The hash families, public: what every backend must reproduce bit for bit.

A backend (:mod:`sketchlib.backends`) receives a sketch's row ``keys`` and hash
``version`` and maps coordinates to buckets and signs exactly as
:func:`buckets_and_signs` does; this NumPy code is the specification (see the
formulas of both versions in ``sketchlib._hash``'s docstring, repeated in the
README).  Backends written outside sketchlib, and benchmarks that rebuild the
reference design, import it from here.
"""
from ._hash import BLOCKED_WIDTH, HASH_VERSIONS, auto_hash_version, buckets_and_signs, row_keys

__all__ = ["BLOCKED_WIDTH", "HASH_VERSIONS", "auto_hash_version", "buckets_and_signs", "row_keys"]
