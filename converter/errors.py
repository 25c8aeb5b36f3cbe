"""Converter errors. Each carries one readable line for the CLI.

    ConverterError
     ├── ModelLoadError      the model file cannot be read or is not a supported kind
     ├── DataError           calibration/validation data unreadable, wrong shape or dtype
     ├── ConversionFailed    a runtime or converter refused to build an artifact
     ├── NoArtifactFits      no candidate meets a profile's budgets (says which and by how much)
     └── ExportError         cloud-serving export failed
"""

from __future__ import annotations


class ConverterError(Exception):
    """Base of every converter error; str() is the one line the CLI prints."""


class ModelLoadError(ConverterError):
    pass


class DataError(ConverterError):
    pass


class ConversionFailed(ConverterError):
    pass


class NoArtifactFits(ConverterError):
    pass


class ExportError(ConverterError):
    pass
