"""qsmprep: a BIDS App for quantitative susceptibility mapping from multi-echo GRE MRI."""

from qsmprep._version import __version__

__all__ = ["__version__"]
