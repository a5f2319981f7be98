"""Stand-in for the PyTorch extension's ``PyTorchUtils`` module (SlicerPyTorch).

Only the logic class, with the real method names and signatures
(``PyTorchUtilsLogic.torchInstalled()``, ``installTorch(askConfirmation=False,
forceComputationBackend=None, torchVersionRequirement=None)``); installing records the call
instead of downloading anything, and returns the ``torch`` module (or None when told to fail).
"""

import types

#: every installTorch call: dicts of its arguments
INSTALLS = []
#: what installTorch returns: "torch" (the torch module) or None (the user/installer gave up)
RESULT = "torch"


class PyTorchUtilsLogic:
    def __init__(self):
        self._torch = None

    @staticmethod
    def torchInstalled():
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        INSTALLS.append({"askConfirmation": askConfirmation, "forceComputationBackend": forceComputationBackend,
                         "torchVersionRequirement": torchVersionRequirement})
        if RESULT is None:
            return None
        import torch

        return torch


def as_module():
    """A fresh ``PyTorchUtils`` module object (install it with monkeypatch.setitem(sys.modules, …))."""
    INSTALLS.clear()
    module = types.ModuleType("PyTorchUtils")
    module.PyTorchUtilsLogic = PyTorchUtilsLogic
    return module
