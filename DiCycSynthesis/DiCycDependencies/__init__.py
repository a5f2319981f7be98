"""Python dependencies of the DiCyc Slicer modules, shared by DiCyc Synthesis and DiCyc Training.

Asked for on first use, never at import time, never in testing mode: torch comes through the
PyTorch extension (``PyTorchUtils``, which picks a CUDA or CPU build that suits this computer);
other packages are installed with ``slicer.util.pip_install`` after the user agrees. A package
folder rather than a ``.py`` file, so Slicer does not take it for a module.
"""

import importlib.util
import logging
import os
import shutil
import sys

import slicer

#: import name → pip requirement, for the packages the engine needs besides torch
#: (numpy, SimpleITK and VTK ship with Slicer)
REQUIREMENTS = {
    "scipy": "scipy>=1.7",
    "nibabel": "nibabel>=3.2",
    "safetensors": "safetensors>=0.4",
    "matplotlib": "matplotlib>=3.5",
}
#: what each kind of work needs (torch is added where ``needTorch``)
#: application setting through which DiCyc Training hands a freshly trained model to Synthesis
MODEL_PATH_SETTING = "DiCyc/ModelPath"

SYNTHESIS = ("scipy", "nibabel", "safetensors")
COMPARISON = ("scipy", "nibabel")
TRAINING = ("scipy", "nibabel", "safetensors", "matplotlib")


def pythonSlicerExecutable():
    """The interpreter for background processes.

    Inside Slicer ``sys.executable`` can be the application itself; ``PythonSlicer`` is the
    launcher that sets up Slicer's Python environment for a child process.
    """
    found = shutil.which("PythonSlicer")
    if found:
        return found
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    for folder in (os.path.dirname(sys.executable), os.path.join(os.path.dirname(sys.executable), "..", "bin")):
        candidate = os.path.normpath(os.path.join(folder, name))
        if os.path.exists(candidate):
            return candidate
    return None


def missingPackages(names, needTorch=True):
    """Import names among ``names`` (and torch where ``needTorch``) that are not installed."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if needTorch and importlib.util.find_spec("torch") is None:
        missing.insert(0, "torch")
    return missing


def ensureDependencies(purpose, names, needTorch=True, parent=None):
    """True when every package ``purpose`` (e.g. "synthesis") needs is importable, installing after asking.

    A restart is offered when a package that was already loaded got replaced.
    """
    missing = missingPackages(names, needTorch)
    if not missing:
        return True
    if slicer.app.testingEnabled():
        logging.info("DiCyc %s: missing %s (nothing is installed in testing mode)", purpose, ", ".join(missing))
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(
                f"DiCyc {purpose} needs PyTorch, which comes with the 'PyTorch' extension. Install it from the "
                "Extensions Manager, restart Slicer and try again.", parent=parent)
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            # PyTorchUtils asks the user itself (askConfirmation) and chooses the CPU/CUDA build
            with slicer.util.tryWithErrorDisplay("Failed to install PyTorch.", waitCursor=True):
                torch = torchLogic.installTorch(askConfirmation=True)
            if torch is None:
                slicer.util.warningDisplay(f"PyTorch was not installed, so DiCyc {purpose} cannot run.", parent=parent)
                return False
        missing.remove("torch")
    if missing:
        requirements = [REQUIREMENTS[name] for name in missing]
        if not slicer.util.confirmOkCancelDisplay(
                f"DiCyc {purpose} needs these Python packages, which are not installed yet:\n\n  "
                + "\n  ".join(requirements)
                + "\n\nInstall them now with pip? This needs a network connection and takes a minute.",
                "DiCyc: install Python packages", parent=parent):
            return False
        alreadyLoaded = [name for name in missing if name in sys.modules]
        with slicer.util.tryWithErrorDisplay("Failed to install Python packages.", waitCursor=True):
            slicer.util.pip_install(requirements)
        if alreadyLoaded and slicer.util.confirmYesNoDisplay(
                "Some packages were already loaded and have been replaced. Restart Slicer now to use them?",
                parent=parent):
            slicer.util.restart()
            return False
    still = missingPackages(names, needTorch)
    if still:
        slicer.util.errorDisplay("Still missing after installation: " + ", ".join(still)
                                 + ". Restart Slicer and try again.", parent=parent)
        return False
    return True
