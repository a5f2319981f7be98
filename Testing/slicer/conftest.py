"""Fixtures for the Slicer-module logic tests, run on real MRML nodes from the ``slicer-core`` wheel.

``slicer-core`` (PyPI) holds Slicer's MRML, logic and segmentation libraries without Qt or the
application, so the modules' ``<Module>Lib`` logic — which takes the scene as a parameter —
runs here unchanged. Without the wheel the tests in this folder are not collected (the report
header says so).
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent


def _import_slicer():
    """``import slicer`` without this folder becoming part of it.

    slicer-core's ``slicer`` is a namespace-style package: at import it adds every ``slicer``
    folder found on ``sys.path`` to its ``__path__``, imports each module in them and copies their
    public names onto ``slicer``. pytest puts ``Testing/`` on ``sys.path`` (for Testing/conftest.py),
    so this folder — named ``slicer`` — would be swept in: every test module imported as
    ``slicer.test_*`` and names such as ``app`` or ``qt`` of the widget harness copied onto
    ``slicer``. So ``Testing/`` is off ``sys.path`` while ``slicer`` is first imported.
    """
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != HERE.parent]
    try:
        import slicer
    finally:
        sys.path[:] = saved
    slicer.__path__[:] = [p for p in slicer.__path__ if Path(p).resolve() != HERE]
    return slicer


try:
    slicer = _import_slicer()
    HAVE_SLICER_CORE = hasattr(slicer, "vtkMRMLScene")
except ImportError:
    slicer = None
    HAVE_SLICER_CORE = False

if HAVE_SLICER_CORE:
    import vtk  # a dependency of slicer-core
else:
    # Without the wheel nothing here can even be imported: leave the folder out of collection
    # (and say so in the report header) instead of failing on import errors.
    collect_ignore_glob = ["test_*.py"]

    def pytest_report_header(config):
        return "slicer-core is not installed: the Slicer logic tests in Testing/slicer are not collected"

ROOT = HERE.parents[1]
for module_dir in ("DiCycSynthesis", "DiCycTraining"):
    path = ROOT / module_dir
    if path.is_dir() and str(path) not in sys.path:
        sys.path.insert(0, str(path))

_RULES_REGISTERED = []


def register_segmentation_converter_rules():
    """Register the binary-labelmap <-> closed-surface converter rules once per process.

    Inside Slicer the Segmentations module does this at start-up; a bare MRML library needs it
    before segmentation nodes can convert or export representations.
    """
    if _RULES_REGISTERED:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    _RULES_REGISTERED.append(True)


@pytest.fixture
def bare_scene():
    """A fresh vtkMRMLScene with nothing in it (no colour tables, no views)."""
    register_segmentation_converter_rules()
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def scene(bare_scene):
    """A fresh scene with Slicer's default colour tables (as the application has them)."""
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(bare_scene)
    yield bare_scene
    colors.SetMRMLScene(None)


@pytest.fixture
def slice_views(scene):
    """Red, Yellow and Green slice views (slice + composite nodes) as Slicer's layout makes them;
    returns {name: vtkMRMLSliceLogic}."""
    from DiCycSynthesisLib import create_slice_views

    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = create_slice_views(scene)
    collection = vtk.vtkCollection()
    for logic in logics.values():
        collection.AddItem(logic)
    app_logic.SetSliceLogics(collection)
    logics["_app"] = app_logic
    yield logics
    for name, logic in list(logics.items()):
        if name != "_app":
            logic.SetMRMLScene(None)
    app_logic.SetMRMLScene(None)


# ----------------------------------------------------------------- shared test data
def oblique_direction(deg_z=20.0, deg_x=-12.0):
    a, b = math.radians(deg_z), math.radians(deg_x)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


TINY_ARCH = {"generator": "resnet", "ngf": 4, "n_blocks": 1, "upsample": "transpose", "input_nc": 1, "output_nc": 1}


def tiny_card():
    return {
        "method": "cyclegan",
        "architecture": dict(TINY_ARCH),
        "domains": {
            "a": {"name": "MR", "modality": "MR",
                  "normalization": {"kind": "mr-percentile", "low": 10.0, "high": 300.0, "percentiles": [0.5, 99.5]}},
            "b": {"name": "CT", "modality": "CT",
                  "normalization": {"kind": "ct-window", "low": -1024.0, "high": 2000.0}},
        },
        "spacing": [2.0, 2.0],
        "slice_size": 64,
        "training": {"iterations_done": 0, "seed": 0},
    }


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A real DiCyc model file (MR → CT) with tiny generators (ngf 4, one residual block)."""
    torch = pytest.importorskip("torch")
    from dicyc.modelfile import save_model
    from dicyc.nets import build_generator

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny-mr2ct.safetensors"
    save_model(path, {"G_AB": build_generator(TINY_ARCH), "G_BA": build_generator(TINY_ARCH)}, tiny_card())
    return path


def mr_like_volume(shape=(6, 40, 34), spacing=(0.9, 1.1, 3.0), seed=1, direction=None, origin=(12.5, -40.25, 7.0)):
    """An MR-like ellipsoid (two tissues + noise) on an oblique, anisotropic grid."""
    from dicyc.volume import Volume

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 1.5) ** 2
    arr = np.where(r < 1, 120.0, 0.0) + np.where(r < 0.3, 100.0, 0.0) + rng.normal(0, 3, shape)
    arr = np.clip(arr, 0, None).astype(np.float32)
    return Volume(arr, spacing, origin, oblique_direction() if direction is None else direction)


@pytest.fixture
def mr_volume():
    """Factory: ``mr_volume(shape=..., spacing=..., seed=..., direction=..., origin=...)``."""
    return mr_like_volume


@pytest.fixture
def model_card():
    """Factory of the tiny model's card (a fresh dict each call)."""
    return tiny_card


# ----------------------------------------------------------------- the widget harness
@pytest.fixture
def slicer_app(scene, monkeypatch, tmp_path):
    """The modules' widgets on this scene, with strict Qt stand-ins (Testing/slicer/standins).

    The user's models folder is a fresh temporary folder. At the end the modules are unloaded
    (their ``cleanup()`` runs) and the test fails on any dialog it did not expect, any exception
    raised in a slot, or a wait cursor left on.
    """
    from standins import SlicerHarness

    harness = SlicerHarness(scene, monkeypatch, settings={"DiCyc/ModelsFolder": str(tmp_path / "my-models")})
    yield harness
    harness.finish()


# ----------------------------------------------------------------- DiCyc's sample data
ABDOMEN_SAMPLE = "DiCycAbdomen"


@pytest.fixture(scope="session")
def abdomen_samples(tmp_path_factory):
    """The DiCycAbdomen files, prepared once by the engine (``dicyc samples``) into a folder of this
    session, in a Python where the optional packages that DiCycDependencies.NEEDS["samples"] does
    not list cannot be imported. Returns ``(folder, the optional packages it imported)``.

    The engine's packages (pydicom-data for the real abdominal CT slice) come from the dicyc cache
    as a user's would; where they are not there and cannot be fetched the tests that need the
    sample are skipped, with the engine's sentence.
    """
    import os
    import subprocess

    import DiCycDependencies

    folder = tmp_path_factory.mktemp("samples")
    optional = ("scipy", "nibabel", "matplotlib", "torch", "safetensors")
    blocked = [name for name in optional if name not in DiCycDependencies.NEEDS["samples"]]
    result = subprocess.run([sys.executable, str(HERE / "blocked_imports.py"), ",".join(blocked), "samples-prepare",
                             str(folder)], capture_output=True, encoding="utf-8", errors="replace", timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        if "DicycError" in result.stderr:
            pytest.skip("the abdominal sample cannot be prepared here: " + result.stderr.strip().splitlines()[-1])
        raise AssertionError("preparing the abdominal sample failed:\n" + result.stderr[-3000:])
    words = result.stdout.split()
    assert words[:2] == ["OK", "samples-prepare"], result.stdout
    return folder, set(words[2].split(",")) if len(words) > 2 else set()


@pytest.fixture
def seed_abdomen_samples(abdomen_samples):
    """``seed(cache)``: put the prepared DiCycAbdomen files into ``<cache>/samples``, where the engine
    looks for prepared samples when ``DICYC_CACHE`` is ``cache``; returns that folder."""
    import shutil

    def seed(cache):
        target = Path(cache) / "samples"
        target.mkdir(parents=True, exist_ok=True)
        for path in Path(abdomen_samples[0]).glob("*.nii.gz"):
            shutil.copy2(path, target / path.name)
        return target

    return seed


@pytest.fixture
def abdomen_cache(seed_abdomen_samples, tmp_path, monkeypatch):
    """``DICYC_CACHE`` set to a fresh folder whose ``samples`` hold the prepared DiCycAbdomen files."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DICYC_CACHE", str(cache))
    return seed_abdomen_samples(cache)
