"""Deprecated: ``scoresde.evaluate`` is now :mod:`scoresde.likelihood` (test-set evaluation) and
:mod:`scoresde.quantize` (the grid). This path works for one release, with a ``DeprecationWarning``."""
from ._deprecated import forwarder

__getattr__ = forwarder("scoresde.evaluate", "scoresde.likelihood (the grid: scoresde.quantize)",
                        ("scoresde.likelihood", "scoresde.likelihood.evaluate", "scoresde.likelihood.bpd",
                         "scoresde.likelihood.batches", "scoresde.likelihood.sharding", "scoresde.quantize"),
                        aliases={"dequantize_uniform": "dequantize"})
