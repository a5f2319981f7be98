"""Python dependencies of the DiCyc Slicer modules, shared by DiCyc Synthesis and DiCyc Training.

Asked for on first use, never at import time, never in testing mode, and only for what the work
at hand really imports (:data:`NEEDS`): making a checkerboard needs nothing beyond what ships
with Slicer (numpy, SimpleITK, VTK), ROI metrics need scipy, synthesis torch, safetensors and
scipy, and preparing DiCyc's sample data the first time scipy and nibabel. Whatever is missing
is listed in **one** confirmation; then torch comes through the PyTorch extension (``PyTorchUtils``, which picks a CUDA or CPU build that suits this computer,
here with :data:`TORCH_REQUIREMENT`) and the rest through ``slicer.util.pip_install``. A package
folder rather than a ``.py`` file, so Slicer does not take it for a module.
"""

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import sys

import slicer

#: application setting through which DiCyc Training hands a freshly trained model to Synthesis
MODEL_PATH_SETTING = "DiCyc/ModelPath"

#: the oldest torch the engine runs on: model loading uses ``load_state_dict(assign=True)`` (2.1)
TORCH_MINIMUM = (2, 1)
TORCH_REQUIREMENT = ">=2.1"

#: import name → pip requirement, for the packages the engine needs besides torch
#: (numpy, SimpleITK and VTK ship with Slicer)
REQUIREMENTS = {
    "scipy": "scipy>=1.7",
    "nibabel": "nibabel>=3.2",
    "safetensors": "safetensors>=0.4",
    "matplotlib": "matplotlib>=3.5",
}

#: what each kind of work imports beyond what ships with Slicer. Testing/slicer runs each path
#: with every other optional package blocked, and with each listed one blocked in turn.
#: - synthesis: the generator (torch), the model file (safetensors), the body mask (scipy); the
#:   engine reads and writes NRRD there, so nibabel (NIfTI only) is not needed;
#: - comparison: checkerboard and error image: numpy and SimpleITK only;
#: - metrics: SSIM's Gaussian window and the high-gradient mask (scipy);
#: - training: the user's files may be NIfTI (nibabel), previews and the loss curve (matplotlib);
#: - samples: the engine's first preparation of DiCyc's sample data (``dicyc samples``) reads
#:   NIfTI sources (nibabel) and simulates the abdominal phantom (scipy); loading files that are
#:   already prepared needs neither, so it is asked only when a file is missing.
NEEDS = {
    "synthesis": ("torch", "safetensors", "scipy"),
    "comparison": (),
    "metrics": ("scipy",),
    "training": ("torch", "safetensors", "scipy", "nibabel", "matplotlib"),
    "samples": ("scipy", "nibabel"),
}


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


def installed(name):
    """True when the package ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installedVersion(name):
    """The installed distribution's version string, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versionTuple(text):
    """(major, minor) of a version string such as ``2.0.1+cu118``; None if it does not parse."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(text or ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def missingRequirements(purpose):
    """What ``purpose`` (a key of :data:`NEEDS`) lacks: a list of ``(import name, requirement,
    note)`` — torch first, with ``note`` saying what is installed when it is only too old."""
    missing = []
    for name in NEEDS[purpose]:
        if name == "torch":
            if not installed("torch"):
                missing.append(("torch", "torch" + TORCH_REQUIREMENT, ""))
                continue
            version = installedVersion("torch")
            found = versionTuple(version)
            if found is not None and found < TORCH_MINIMUM:
                missing.append(("torch", "torch" + TORCH_REQUIREMENT, f"installed: {version}"))
        elif not installed(name):
            missing.append((name, REQUIREMENTS[name], ""))
    return sorted(missing, key=lambda item: item[0] != "torch")


def missingPackages(purpose):
    """Import names of what ``purpose`` lacks (see :func:`missingRequirements`)."""
    return [name for name, _, _ in missingRequirements(purpose)]


def _confirmationText(purpose, missing):
    lines = []
    for name, requirement, note in missing:
        how = "through the PyTorch extension" if name == "torch" else "with pip"
        lines.append(f"  {requirement}  ({how}{'; ' + note if note else ''})")
    return (f"DiCyc {purpose} needs these Python packages, which are not installed yet or are too old:\n\n"
            + "\n".join(lines)
            + "\n\nInstall them now? This needs a network connection and can take several minutes"
            + (" (PyTorch is large)." if any(name == "torch" for name, _, _ in missing) else "."))


def ensureDependencies(purpose, parent=None):
    """True when everything ``purpose`` (a key of :data:`NEEDS`) imports is there, installing
    after one confirmation that lists all of it.

    Nothing is asked when nothing is missing. In testing mode nothing is installed (False).
    torch comes from ``PyTorchUtils`` (the PyTorch extension) with :data:`TORCH_REQUIREMENT`,
    the rest from pip. A restart is offered when a package that was already loaded got replaced.
    """
    missing = missingRequirements(purpose)
    if not missing:
        return True
    names = [name for name, _, _ in missing]
    if slicer.app.testingEnabled():
        logging.info("DiCyc %s: missing %s (nothing is installed in testing mode)", purpose, ", ".join(names))
        return False
    torchUtils = None
    if "torch" in names:
        try:
            import PyTorchUtils as torchUtils
        except ImportError:
            slicer.util.errorDisplay(
                f"DiCyc {purpose} needs PyTorch {TORCH_REQUIREMENT}, which comes with the 'PyTorch' extension. "
                "Install that extension from the Extensions Manager, restart Slicer and try again.", parent=parent)
            return False
    if not slicer.util.confirmOkCancelDisplay(_confirmationText(purpose, missing), "DiCyc: install Python packages",
                                              parent=parent):
        return False
    alreadyLoaded = [name for name in names if name in sys.modules]
    try:
        with slicer.util.tryWithErrorDisplay("Failed to install Python packages.", waitCursor=True):
            if torchUtils is not None:
                # the user has agreed above: PyTorchUtils must not ask again
                torch = torchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("PyTorch was not installed.")
            pipRequirements = [requirement for name, requirement, _ in missing if name != "torch"]
            if pipRequirements:
                slicer.util.pip_install(pipRequirements)
    except Exception as exc:  # shown to the user by tryWithErrorDisplay
        logging.error("DiCyc %s: installing %s failed: %s", purpose, ", ".join(names), exc)
        return False
    if alreadyLoaded:
        if slicer.util.confirmYesNoDisplay(
                f"{', '.join(alreadyLoaded)} had already been loaded and got replaced. Slicer must restart to use "
                "the new version. Restart now?", parent=parent):
            slicer.util.restart()
        return False
    still = missingPackages(purpose)
    if still:
        slicer.util.errorDisplay("Still missing after installation: " + ", ".join(still)
                                 + ". Restart Slicer and try again.", parent=parent)
        return False
    return True


def mpsAvailable():
    """True on a Mac whose PyTorch can run on the Apple GPU (MPS). torch is imported only on macOS,
    and only when it is installed."""
    if sys.platform != "darwin" or not installed("torch"):
        return False
    from dicyc.device import mps_available

    return mps_available()


def addAvailableDevices(comboBox):
    """Offer "mps" in a device combo box where PyTorch has Apple's GPU (the .ui lists auto, cpu, cuda)."""
    if mpsAvailable() and comboBox.findText("mps") < 0:
        comboBox.addItem("mps")


#: the packages a module's Reload reads from disk again besides the module file itself
SHARED_PACKAGES = ("DiCycCommonLib", "DiCycDependencies")


def forgetPackages(names):
    """Remove the named packages and their submodules from ``sys.modules``, so that the next
    import (the module file's own, re-run by Reload) reads them from disk. Returns what was removed."""
    removed = []
    for loaded in list(sys.modules):
        if any(loaded == name or loaded.startswith(name + ".") for name in names):
            del sys.modules[loaded]
            removed.append(loaded)
    return removed
