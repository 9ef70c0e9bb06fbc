"""DICOM in and out: parametric maps as DICOM series for PACS (:mod:`qsmprep.dicom.export`)."""

from qsmprep.dicom.export import write_series

__all__ = ["write_series"]
