"""DiCyc: deformation-invariant unpaired cross-domain medical image synthesis.

The engine never imports Slicer or Qt, and imports heavy libraries (torch, SimpleITK)
lazily inside the functions that need them, so ``import dicyc`` and the CLI start fast.
"""

__version__ = "0.1.0"
