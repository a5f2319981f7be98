"""DiCycSynthesis logic: MRML nodes in, MRML nodes out, the ``dicyc`` engine in between.

Everything here takes the MRML scene as a parameter and imports only numpy, VTK, Slicer's MRML
classes (through the ``slicer`` namespace, which both 3D Slicer and the ``slicer-core`` PyPI
wheel provide) and ``dicyc`` — no Qt, no CTK, no application singletons — so the test-suite
runs it against real MRML nodes without the Slicer application (``Testing/slicer``).

Sections:

* node ⇄ :class:`dicyc.volume.Volume` conversion that keeps IJK-to-RAS exactly;
* :class:`SynthesisLogic`: synthesis in a background process (``python -m dicyc synthesize
  --progress-jsonl``) that a GUI timer polls, or in this process (:func:`synthesize_in_process`);
* model information for the panel (:func:`model_summary`, :func:`bundled_models`);
* comparison views with Slicer's own slice compositing (:func:`make_checkerboard_node`,
  :func:`make_error_node`, :func:`setup_overlay`);
* ROI metrics from a segmentation or a Markups ROI box into a table node (:func:`roi_metrics`,
  :func:`metrics_table_node`, :func:`export_table_csv`).

Display choices (documented here because the panel relies on them):

* A synthetic CT gets the soft-tissue window **W 400 / L 40 HU** — aorta, muscle and fat are
  distinguishable and bone is white, which is what one checks when judging whether the aorta
  *and* the spine line up. :data:`CT_WINDOWS` lists the alternatives (``"bone"``: W 1500 / L 300).
  Synthetic volumes of other modalities get an automatic window.
* Error images use the colour table node ``"DiCyc error"`` (black → red → yellow → white, a
  "hot" map), created once per scene by :func:`error_color_node`; zero error is made transparent
  with the display node's lower threshold so the background volume shows through.
"""

import csv
import io
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

import dicyc
from dicyc.background import BackgroundProcess, dicyc_command
from dicyc.errors import DicycError
from dicyc.volume import LPS_TO_RAS, Volume

#: CT display windows (width, level) in HU; DEFAULT_CT_WINDOW is what a synthetic CT gets.
CT_WINDOWS = {"soft tissue": (400.0, 40.0), "bone": (1500.0, 300.0), "brain": (80.0, 40.0), "lung": (1500.0, -600.0)}
DEFAULT_CT_WINDOW = "soft tissue"
#: The temporary files of a background synthesis (NRRD keeps the geometry in double precision).
INPUT_NAME = "input.nrrd"
OUTPUT_NAME = "output.nrrd"
EVENTS_NAME = "progress.jsonl"
#: Singleton tag (and name) of the error colour table node.
ERROR_COLOR_NAME = "DiCyc error"
#: Table columns: (title, row key, vtk array class, unit).
TABLE_COLUMNS = (
    ("Segment", "segment", "vtkStringArray", ""),
    ("MSE", "mse", "vtkDoubleArray", "units^2"),
    ("PSNR", "psnr", "vtkDoubleArray", "dB"),
    ("SSIM", "ssim", "vtkDoubleArray", ""),
    ("MAE", "mae", "vtkDoubleArray", "units"),
    ("Voxels", "n_voxels", "vtkIntArray", ""),
)
#: Environment variable: extra folders (os.pathsep-separated) searched for bundled/shared models.
MODELS_ENV = "DICYC_MODELS"


# ===================================================================== node <-> Volume
def _matrix_to_numpy(matrix):
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=float)


def _numpy_to_matrix(array):
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(array[i][j]))
    return m


def ijk_to_ras_of(node):
    """The node's 4x4 IJKToRAS matrix as a numpy array."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _matrix_to_numpy(m)


def _directions_of(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    return _matrix_to_numpy(m)[:3, :3]


def volume_from_node(node, copy=True, world=False):
    """A :class:`~dicyc.volume.Volume` from a scalar volume node: array (k, j, i), geometry exact.

    The geometry is taken from what the node stores (spacing, origin and IJK-to-RAS directions)
    rather than decomposed from its 4x4 matrix, so converting back with
    :func:`update_node_from_volume` reproduces IJKToRAS bit for bit; it equals
    ``Volume.from_ijk_to_ras(array, node IJKToRAS)`` up to rounding. By default the node's own
    (local) coordinates are used — a synthesis placed under the same parent transform overlays
    it. ``world=True`` composes a linear parent transform (what the user sees), for volumes
    written to files; a node under a non-linear transform must be hardened first.
    """
    if node is None:
        raise DicycError("no volume selected.")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise DicycError(f"volume {node.GetName()} holds no image data.")
    if image.GetNumberOfScalarComponents() != 1:
        raise DicycError(
            f"volume {node.GetName()} has {image.GetNumberOfScalarComponents()} components per voxel; "
            "DiCyc needs a scalar (greyscale) volume."
        )
    nx, ny, nz = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    if copy:
        array = array.copy()
    spacing = tuple(float(s) for s in node.GetSpacing())
    origin_ras = np.array(node.GetOrigin(), dtype=float)
    directions_ras = _directions_of(node)
    volume = Volume(array, spacing, tuple(LPS_TO_RAS @ origin_ras), LPS_TO_RAS @ directions_ras)
    parent = node.GetParentTransformNode() if world else None
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise DicycError(f"volume {node.GetName()} is under a non-linear transform; harden the transform first.")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        volume = Volume.from_ijk_to_ras(volume.array, _matrix_to_numpy(to_world) @ volume.ijk_to_ras())
    return volume


def _vtk_array_for(array):
    arr = np.ascontiguousarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return numpy_support.numpy_to_vtk(arr.ravel(), deep=True)


def update_node_from_volume(node, volume):
    """Put ``volume``'s voxels and geometry into ``node`` (replacing its image data).

    Spacing, origin and IJK-to-RAS directions are set directly, so the node's IJKToRAS equals
    ``volume.ijk_to_ras()`` and a node → Volume → node round trip is exact.
    """
    arr = np.asarray(volume.array)
    nz, ny, nx = arr.shape
    image = vtk.vtkImageData()
    image.SetDimensions(nx, ny, nz)
    scalars = _vtk_array_for(arr)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    was = node.StartModify()
    node.SetSpacing(*volume.spacing)
    node.SetOrigin(*(LPS_TO_RAS @ np.asarray(volume.origin, dtype=float)))
    directions = np.eye(4)
    directions[:3, :3] = LPS_TO_RAS @ volume.direction
    node.SetIJKToRASDirectionMatrix(_numpy_to_matrix(directions))
    node.SetAndObserveImageData(image)
    node.EndModify(was)
    return node


def copy_geometry(target_node, source_node):
    """Give ``target_node`` exactly ``source_node``'s IJKToRAS and parent transform."""
    target_node.CopyOrientation(source_node)
    target_node.SetAndObserveTransformNodeID(source_node.GetTransformNodeID())


def add_volume_node(scene, volume, name, node_class="vtkMRMLScalarVolumeNode"):
    """A new volume node (with a grey display node) holding ``volume``."""
    node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name) if name else "")
    update_node_from_volume(node, volume)
    ensure_display_node(scene, node)
    return node


# ===================================================================== display
def grey_color_node_id(scene):
    """ID of the standard grey colour table, created (as Slicer's own singleton) if missing.

    Inside 3D Slicer it always exists; a bare scene (slicer-core, tests) gets one with the same
    ID, ``vtkMRMLColorTableNodeGrey``.
    """
    node_id = "vtkMRMLColorTableNodeGrey"
    if scene.GetNodeByID(node_id) is None:
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToGrey()
        node.SetSingletonTag(node.GetTypeAsString())
        node.SetHideFromEditors(True)
        scene.AddNode(node)
        node_id = node.GetID()
    return node_id


def ensure_display_node(scene, node):
    """The node's display node, created with a grey colour table if it has none."""
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    if display is None:  # very old MRML: do it by hand
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        node.SetAndObserveDisplayNodeID(display.GetID())
    color_id = display.GetColorNodeID()
    if not color_id or scene.GetNodeByID(color_id) is None:
        display.SetAndObserveColorNodeID(grey_color_node_id(scene))
    return display


def set_window_level(scene, node, window, level):
    """Fixed window/level on the node's display node (automatic window turned off)."""
    display = ensure_display_node(scene, node)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(float(window), float(level))
    return display


def set_ct_window(scene, node, preset=DEFAULT_CT_WINDOW):
    """Apply a CT window preset of :data:`CT_WINDOWS` (default soft tissue, W 400 / L 40 HU)."""
    window, level = CT_WINDOWS[preset] if isinstance(preset, str) else preset
    return set_window_level(scene, node, window, level)


def error_color_node(scene):
    """The "DiCyc error" colour table (black → red → yellow → white), created once per scene.

    Own table rather than a named standard one: Slicer's file-based tables (Inferno, …) are not
    present in a bare MRML scene, and this one reads well as an overlay on a grey volume.
    """
    existing = scene.GetSingletonNode(ERROR_COLOR_NAME, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetTypeToUser()
    node.SetName(ERROR_COLOR_NAME)
    node.SetSingletonTag(ERROR_COLOR_NAME)
    node.SetHideFromEditors(False)
    n = 256
    node.SetNumberOfColors(n)
    for i in range(n):
        t = i / (n - 1)
        r = min(1.0, 3.0 * t)
        g = min(1.0, max(0.0, 3.0 * t - 1.0))
        b = min(1.0, max(0.0, 3.0 * t - 2.0))
        node.SetColor(i, f"{i}", r, g, b, 1.0)
    scene.AddNode(node)
    return node


# ===================================================================== model information
def target_domain(card, direction="a2b"):
    """(source, target) domain dicts of a model card for ``direction``."""
    domains = card.get("domains") or {}
    src, tgt = ("a", "b") if direction == "a2b" else ("b", "a")
    return domains.get(src) or {}, domains.get(tgt) or {}


def _domain_label(domain):
    name = str(domain.get("name") or domain.get("modality") or "?")
    modality = domain.get("modality")
    return name if not modality or str(modality) == name else f"{name} ({modality})"


def model_summary(path):
    """What the panel shows about a model file, from its card only (no weights loaded).

    Returns a dict: ``path``, ``method``, ``domain_a``, ``domain_b`` (labels), ``modality_a``,
    ``modality_b``, ``spacing`` (mm, in-plane), ``slice_size``, ``iterations``, ``code_version``,
    ``created`` and ``text`` (a few lines for a label); on a bad file only ``path``, ``error``
    (one sentence) and ``text``.
    """
    from dicyc.modelfile import read_card

    try:
        card = read_card(path)
    except DicycError as exc:
        return {"path": str(path), "error": str(exc), "text": f"Not usable: {exc}"}
    domains = card.get("domains") or {}
    a, b = domains.get("a") or {}, domains.get("b") or {}
    training = card.get("training") or {}
    arch = card.get("architecture") or {}
    spacing = card.get("spacing")
    summary = {
        "path": str(path),
        "method": card.get("method"),
        "domain_a": _domain_label(a),
        "domain_b": _domain_label(b),
        "modality_a": a.get("modality"),
        "modality_b": b.get("modality"),
        "spacing": list(spacing) if isinstance(spacing, (list, tuple)) else spacing,
        "slice_size": card.get("slice_size"),
        "iterations": training.get("iterations_done"),
        "architecture": f"{arch.get('generator', '?')} ngf {arch.get('ngf', '?')}, {arch.get('n_blocks', '?')} blocks",
        "code_version": card.get("code_version"),
        "created": card.get("created"),
    }
    spacing_text = " × ".join(f"{float(s):g}" for s in spacing) + " mm" if isinstance(spacing, (list, tuple)) else "?"
    lines = [
        f"Method: {summary['method']}",
        f"Domains: A = {summary['domain_a']}, B = {summary['domain_b']} (a2b: A → B)",
        f"Training spacing: {spacing_text}, slice size {summary['slice_size']}",
        f"Generator: {summary['architecture']}"
        + (f", {summary['iterations']} iterations" if summary["iterations"] is not None else ""),
    ]
    summary["text"] = "\n".join(lines)
    return summary


def model_search_folders():
    """Folders searched for ``.safetensors`` models, in order.

    1. ``<folder holding dicyc>/Resources/Models`` — in a source checkout that is the repository's
       ``Resources/Models``; in an installed extension ``dicyc/`` sits in the extension's
       ``qt-scripted-modules`` folder, next to the module scripts, so this is the modules'
       ``Resources/Models`` (where the extension's CMake installs the bundled demo model);
    2. ``DiCycSynthesis/Resources/Models`` next to this module;
    3. every folder in the ``DICYC_MODELS`` environment variable.
    """
    folders = [
        Path(dicyc.__file__).resolve().parents[1] / "Resources" / "Models",
        Path(__file__).resolve().parents[1] / "Resources" / "Models",
    ]
    folders += [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def bundled_models():
    """The ``.safetensors`` files of :func:`model_search_folders` (sorted by name; may be empty)."""
    found = []
    for folder in model_search_folders():
        if folder.is_dir():
            found += sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    return found


# ===================================================================== synthesis
def _is_ct(domain):
    return str(domain.get("modality") or domain.get("name") or "").upper() == "CT"


def _style_synthetic(scene, node, card, direction, ct_window):
    src, tgt = target_domain(card or {}, direction)
    if _is_ct(tgt):
        set_ct_window(scene, node, ct_window)
    else:
        display = ensure_display_node(scene, node)
        display.AutoWindowLevelOn()
    node.SetAttribute("DiCyc.Synthetic", "1")
    node.SetAttribute("DiCyc.Direction", direction)
    node.SetAttribute("DiCyc.TargetModality", str(tgt.get("modality") or ""))


def _output_node(scene, output_node, input_node, card, direction):
    if output_node is not None:
        if output_node.GetID() == input_node.GetID():
            raise DicycError("the output volume must not be the input volume; choose another or create a new one.")
        return output_node
    _, tgt = target_domain(card or {}, direction)
    label = str(tgt.get("name") or tgt.get("modality") or "synthetic")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{input_node.GetName()} synthetic {label}"))
    return node


def _place_result(scene, input_node, result, output_node, card, direction, ct_window):
    """Put ``result`` (a Volume on the input's grid) into an output node overlaying the input."""
    reference = volume_from_node(input_node, copy=False)
    if result.shape != reference.shape or not result.same_grid(reference, tol=1e-3):
        raise DicycError(
            f"the synthetic volume's grid {result.size} does not match the input {reference.size}; not placing it."
        )
    node = _output_node(scene, output_node, input_node, card, direction)
    update_node_from_volume(node, result)
    copy_geometry(node, input_node)  # bit-exact IJKToRAS of the input, whatever the file kept
    _style_synthetic(scene, node, card, direction, ct_window)
    return node


def synthesize_in_process(scene, input_node, model_path, direction="a2b", device="auto", precision="auto", batch=8,
                          output_node=None, progress=None, ct_window=DEFAULT_CT_WINDOW):
    """Synthesise in this process (blocks; for scripts, tests and a fallback). Returns (node, info).

    The output node has exactly the input's IJKToRAS (and parent transform), and a CT window
    when the model's target is CT.
    """
    from dicyc.modelfile import load_model
    from dicyc.synthesize import synthesize_volume_with_info

    model = load_model(model_path, device="cpu")
    volume = volume_from_node(input_node)
    result, info = synthesize_volume_with_info(
        model, volume, direction=direction, device=device, precision=precision, batch=batch, progress=progress,
        name=f"volume {input_node.GetName()}",
    )
    node = _place_result(scene, input_node, result, output_node, model.card, direction, ct_window)
    return node, info


class SynthesisLogic:
    """Synthesis in a background process that a GUI timer follows.

    ``start`` writes the input node to a work folder and launches ``python -m dicyc synthesize
    … --progress-jsonl``; ``poll`` (call every ~200 ms) returns the progress; ``finish`` loads
    the result into a volume node; ``cancel`` kills the whole process tree. One run at a time.
    """

    def __init__(self, python=None):
        self.python = python
        self.process = None
        self.work_dir = None
        self._own_work_dir = False
        self.input_node_id = None
        self.card = None
        self.direction = "a2b"
        self.output_path = None
        self.fraction = 0.0
        self.eta_s = None
        self.last_message = ""
        self.log = []

    # ----------------------------------------------------------------- command
    @staticmethod
    def build_command(model_path, input_path, output_path, direction="a2b", device="auto", precision="auto", batch=8,
                      python=None, events_path=None):
        """The ``dicyc synthesize`` command line (a list); progress goes to ``events_path``
        (default: ``<output>.progress.jsonl`` beside the output)."""
        if events_path is None:
            events_path = Path(str(output_path) + ".progress.jsonl")
        return dicyc_command(
            "synthesize", "--model", model_path, "--input", input_path, "--output", output_path,
            "--direction", direction, "--device", device, "--precision", precision, "--batch", int(batch),
            "--progress-jsonl", events_path, python=python,
        )

    # ----------------------------------------------------------------- life cycle
    @property
    def running(self):
        return self.process is not None and self.process.running

    def start(self, scene, input_node, model_path, direction="a2b", device="auto", precision="auto", batch=8,
              work_dir=None, python=None, env=None):
        """Write the input, start the background synthesis, return the :class:`BackgroundProcess`.

        Cheap problems (no input, unreadable model card, a run already going) raise
        :class:`DicycError` here, before any process starts.
        """
        from dicyc.modelfile import read_card
        from dicyc.volume import check_finite_values, check_not_constant, write_volume

        if self.running:
            raise DicycError("a synthesis is already running; cancel it first.")
        if input_node is None:
            raise DicycError("select an input volume first.")
        if not model_path:
            raise DicycError("select a model first.")
        self.card = read_card(model_path)
        self.direction = direction
        volume = volume_from_node(input_node, copy=False)
        check_finite_values(volume, f"volume {input_node.GetName()}")
        check_not_constant(volume, f"volume {input_node.GetName()}")
        self._cleanup()
        if work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="dicyc-synthesis-"))
            self._own_work_dir = True
        else:
            self.work_dir = Path(work_dir)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._own_work_dir = False
        input_path = self.work_dir / INPUT_NAME
        self.output_path = self.work_dir / OUTPUT_NAME
        events_path = self.work_dir / EVENTS_NAME
        for stale in (self.output_path, events_path):
            if stale.exists():
                stale.unlink()
        write_volume(volume, input_path)
        command = self.build_command(model_path, input_path, self.output_path, direction, device, precision, batch,
                                     python=python or self.python, events_path=events_path)
        self.input_node_id = input_node.GetID()
        self.fraction, self.eta_s, self.last_message, self.log = 0.0, None, "starting…", []
        self.process = BackgroundProcess(command, events_path=events_path, env=env, cwd=str(self.work_dir))
        self.process.start()
        return self.process

    def poll(self):
        """Progress since the last call, never blocking.

        Returns a dict: ``running``, ``fraction`` (0…1), ``eta_s`` (or None), ``message`` (the
        latest line worth showing), ``events`` (the new events, logs included), ``returncode``
        and ``error`` (one sentence once it failed, else None).
        """
        if self.process is None:
            return {"running": False, "fraction": 0.0, "eta_s": None, "message": "", "events": [], "returncode": None,
                    "error": None}
        running = self.process.running  # checked first: the poll after exit gets everything
        events = self.process.poll()
        for event in events:
            kind = event.get("event")
            if kind == "iteration" and event.get("total_iterations"):
                self.fraction = min(1.0, float(event.get("iteration", 0)) / float(event["total_iterations"]))
                self.eta_s = event.get("eta_s")
                self.last_message = f"{event.get('iteration')}/{event['total_iterations']} slices"
            elif kind == "done":
                self.fraction = 1.0
                self.eta_s = 0.0
                self.last_message = "done"
            elif kind == "error":
                self.last_message = str(event.get("message", "failed"))
            elif kind == "start":
                self.last_message = "started"
            elif kind == "log":
                self.log.append(event.get("message", ""))
                del self.log[:-200]
        code = self.process.returncode
        return {
            "running": running,
            "fraction": self.fraction,
            "eta_s": self.eta_s,
            "message": self.last_message,
            "events": events,
            "returncode": code,
            "error": self.process.error_message() if (code not in (None, 0)) else None,
        }

    def wait(self, timeout=None):
        """Block until the process ends (scripts and tests only). Returns its exit status."""
        if self.process is None:
            raise DicycError("no synthesis was started.")
        return self.process.wait(timeout)

    def finish(self, scene, output_node=None, ct_window=DEFAULT_CT_WINDOW):
        """Load the finished result into ``output_node`` (a new node if None) and return it.

        The node gets the input's exact IJKToRAS and parent transform and, for a CT target, the
        CT window. Raises :class:`DicycError` with the process's one-sentence error if it failed.
        """
        from dicyc.volume import read_volume

        if self.process is None:
            raise DicycError("no synthesis was started.")
        if self.process.running:
            raise DicycError("the synthesis is still running.")
        self.poll()  # the last events and log lines
        input_node = scene.GetNodeByID(self.input_node_id) if self.input_node_id else None
        if self.process.returncode != 0:
            message = self.user_message(self.process.error_message() or f"exit status {self.process.returncode}",
                                        input_node)
            self._cleanup()
            raise DicycError(f"synthesis failed: {message}")
        if input_node is None:
            self._cleanup()
            raise DicycError("the input volume was removed from the scene during synthesis.")
        try:
            result = read_volume(self.output_path)
            node = _place_result(scene, input_node, result, output_node, self.card, self.direction, ct_window)
        finally:
            self._cleanup()
        return node

    def user_message(self, message, input_node=None):
        """The child's error line without its ``dicyc synthesize: error:`` prefix, naming the input
        volume instead of its temporary file."""
        text = str(message)
        prefix = "dicyc synthesize: error: "
        if text.startswith(prefix):
            text = text[len(prefix):]
        if self.work_dir is not None:
            name = f"volume {input_node.GetName()}" if input_node is not None else "the input volume"
            text = text.replace(str(self.work_dir / INPUT_NAME), name)
        return text

    def cancel(self):
        """Kill the whole process tree (returns once nothing is left) and remove the temporary files."""
        cancelled = False
        if self.process is not None:
            cancelled = self.process.cancel()
        self._cleanup()
        return cancelled

    def _cleanup(self):
        if self._own_work_dir and self.work_dir is not None and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if self._own_work_dir:
            self.work_dir = None
            self._own_work_dir = False


# ===================================================================== comparison views
def _on_grid(volume, grid, interpolation="linear"):
    """(``volume`` on ``grid``'s grid, boolean coverage mask or None when it already was)."""
    from dicyc.preprocess import resample_to_grid

    if volume.same_grid(grid):
        return volume, None
    if not volume.overlaps(grid):
        raise DicycError("the two volumes do not overlap in space, so there is nothing to compare.")
    moved = resample_to_grid(volume, grid, interpolation=interpolation)
    covered = resample_to_grid(
        volume.with_array(np.ones(volume.shape, np.uint8)), grid, interpolation="nearest", default_value=0
    ).array.astype(bool)
    return moved, covered


def make_checkerboard_node(scene, a_node, b_node, tiles=8, name=None, windows=None):
    """A 3-D checkerboard of A and B on A's grid (B resampled linearly where grids differ).

    Each volume is first mapped to [0, 1] with its own robust display window
    (:func:`dicyc.views.display_window`, or ``windows=((lowA, highA), (lowB, highB))``), so an
    MR and a CT are both readable; the node is float32 with window 1 / level 0.5, and overlays
    A exactly. Misalignment shows as broken edges at the tile borders.
    """
    from dicyc.views import checkerboard, display_window, to_unit

    a = volume_from_node(a_node, copy=False)
    b, _ = _on_grid(volume_from_node(b_node, copy=False), a)
    wa = windows[0] if windows else display_window(a.array)
    wb = windows[1] if windows else display_window(b.array)
    board = checkerboard(to_unit(a.array, wa), to_unit(b.array, wb), int(tiles))
    node = add_volume_node(scene, a.with_array(board), name or f"Checkerboard {a_node.GetName()} | {b_node.GetName()}")
    copy_geometry(node, a_node)
    set_window_level(scene, node, 1.0, 0.5)
    node.SetAttribute("DiCyc.Checkerboard", str(int(tiles)))
    return node


def make_error_node(scene, synthetic_node, reference_node, name=None):
    """``|synthetic − reference|`` on the synthetic grid, with the "DiCyc error" colour table.

    The reference is resampled (linear) onto the synthetic grid where the grids differ; voxels
    it does not cover get error 0 (they are unknown, not perfect, and are hidden by the
    display threshold). The window spans 0 to the 99th percentile of the error; zero error is
    transparent, so the node works as a foreground overlay on the reference or the synthetic.
    """
    from dicyc.views import error_image

    syn = volume_from_node(synthetic_node, copy=False)
    ref, covered = _on_grid(volume_from_node(reference_node, copy=False), syn)
    err = error_image(syn.array, ref.array)
    if covered is not None:
        err[~covered] = 0.0
    node = add_volume_node(scene, syn.with_array(err), name or f"Error |{synthetic_node.GetName()} - {reference_node.GetName()}|")
    copy_geometry(node, synthetic_node)
    display = ensure_display_node(scene, node)
    display.SetAndObserveColorNodeID(error_color_node(scene).GetID())
    nonzero = err[err > 0]
    top = float(np.percentile(nonzero, 99.0)) if nonzero.size else 1.0
    top = top if top > 0 else 1.0
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top)
    display.SetApplyThreshold(1)
    display.SetLowerThreshold(top * 1e-3)
    display.SetUpperThreshold(float(err.max()) + 1.0)
    node.SetAttribute("DiCyc.ErrorImage", "1")
    return node


def slice_composite_nodes(scene):
    """{layout name: slice composite node} of every slice view in the scene."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    found = {}
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        found[node.GetLayoutName() or node.GetID()] = node
    return found


def _slice_node(scene, layout_name):
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetLayoutName() == layout_name:
            return node
    return None


OVERLAY_LAYOUTS = ("reveal", "side-by-side")


def setup_overlay(scene, background_node, foreground_node, opacity=0.5, layout="reveal"):
    """Show two volumes with Slicer's slice compositing; returns {view: (bg ID, fg ID, opacity)}.

    ``layout="reveal"``: every slice view shows ``background_node`` with ``foreground_node``
    blended on top at ``opacity`` (0 = background only, 1 = foreground only) — moving the opacity
    slider reveals one layer over the other; an error image as foreground works the same way.

    ``layout="side-by-side"``: the Red view shows the background (e.g. the synthetic CT) alone,
    the Yellow view the foreground (e.g. the reference) alone, both axial, and the Green view the
    blend; the composite nodes are linked so slice position, pan and zoom move together. The
    layout switches to Slicer's side-by-side arrangement where a layout node exists.
    """
    if layout not in OVERLAY_LAYOUTS:
        raise ValueError(f"layout must be one of {OVERLAY_LAYOUTS}; got {layout!r}")
    composites = slice_composite_nodes(scene)
    if not composites:
        raise DicycError("the scene has no slice views to set up.")
    opacity = float(min(1.0, max(0.0, opacity)))
    bg_id = background_node.GetID() if background_node is not None else None
    fg_id = foreground_node.GetID() if foreground_node is not None else None
    result = {}
    for name, node in composites.items():
        was = node.StartModify()
        if layout == "reveal" or name not in ("Red", "Yellow"):
            node.SetBackgroundVolumeID(bg_id)
            node.SetForegroundVolumeID(fg_id)
            node.SetForegroundOpacity(opacity)
        elif name == "Red":
            node.SetBackgroundVolumeID(bg_id)
            node.SetForegroundVolumeID(None)
            node.SetForegroundOpacity(0.0)
        else:  # Yellow
            node.SetBackgroundVolumeID(fg_id)
            node.SetForegroundVolumeID(None)
            node.SetForegroundOpacity(0.0)
        if layout == "side-by-side":
            node.SetLinkedControl(1)
        node.EndModify(was)
        result[name] = (node.GetBackgroundVolumeID(), node.GetForegroundVolumeID(), node.GetForegroundOpacity())
    if layout == "side-by-side":
        for view in ("Red", "Yellow"):
            slice_node = _slice_node(scene, view)
            if slice_node is not None:
                slice_node.SetOrientation("Axial")
    else:
        yellow = _slice_node(scene, "Yellow")
        if yellow is not None and yellow.GetOrientation() == "Axial":
            yellow.SetOrientation("Sagittal")  # back to Slicer's default after side-by-side
    layout_node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout_node is not None:
        arrangement = (slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView if layout == "side-by-side"
                       else slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        layout_node.SetViewArrangement(arrangement)
    return result


def create_slice_views(scene, names=("Red", "Yellow", "Green")):
    """Slice nodes and composite nodes for ``names`` via vtkMRMLSliceLogic (what the layout
    manager does inside Slicer); returns {name: slice logic}. For a bare scene (tests, scripts)."""
    logics = {}
    if hasattr(slicer.vtkMRMLSliceNode, "AddDefaultSliceOrientationPresets"):
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # Axial/Sagittal/Coronal, as Slicer has
    for name in names:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.AddSliceNode(name)
        logics[name] = logic
    return logics


# ===================================================================== ROI metrics
def _node_to_world(node):
    """4x4 matrix from the node's coordinates to world (identity without a parent transform)."""
    transform = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise DicycError(f"{node.GetName()} is under a non-linear transform; harden it first.")
    m = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(m)
    return _matrix_to_numpy(m)


def roi_box_mask(ref_node, roi_node):
    """Boolean (k, j, i) mask of ``ref_node``'s voxels whose centre lies inside the Markups ROI box.

    The box may be rotated (its object-to-world matrix) and either node may sit under a linear
    transform. Only the voxels within the box's index-space bounding box are tested, so a small
    ROI on a big CT costs little memory.
    """
    image = ref_node.GetImageData()
    nx, ny, nz = image.GetDimensions()
    ijk_to_world = _node_to_world(ref_node) @ ijk_to_ras_of(ref_node)
    object_to_world = _matrix_to_numpy(roi_node.GetObjectToWorldMatrix())
    size = np.array(roi_node.GetSize(), dtype=float)
    half = size / 2.0
    # corners of the box in IJK, to bound the voxels worth testing
    corners = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    world_to_ijk = np.linalg.inv(ijk_to_world)
    ijk = (world_to_ijk @ object_to_world @ corners.T).T[:, :3]
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int), np.array([nx, ny, nz]) - 1)
    mask = np.zeros((nz, ny, nx), dtype=bool)
    if np.any(hi < lo):
        return mask
    ii, jj, kk = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), np.arange(lo[2], hi[2] + 1),
                             indexing="ij")
    points = np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    ijk_to_object = np.linalg.inv(object_to_world) @ ijk_to_world
    local = (ijk_to_object @ points)[:3]
    tol = 1e-9 * max(1.0, float(np.abs(half).max()))
    inside = np.all(np.abs(local) <= half[:, None] + tol, axis=0)
    mask[points[2, inside].astype(int), points[1, inside].astype(int), points[0, inside].astype(int)] = True
    return mask


def _node_ids(scene, class_name):
    nodes = scene.GetNodesByClass(class_name)
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


def segment_masks(scene, segmentation_node, ref_node, segment_ids=None):
    """[(segment id, segment name, boolean (k, j, i) mask on ref_node's grid)] for each segment.

    Each segment is exported on its own (so overlapping segments keep all their voxels) to a
    temporary labelmap node with the reference volume as geometry, using Slicer's
    ``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode``.
    """
    segmentation = segmentation_node.GetSegmentation()
    if segment_ids is None:
        segment_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    reference = volume_from_node(ref_node, copy=False)
    out = []
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise DicycError(f"segment {segment_id} is not in {segmentation_node.GetName()}.")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        colors_before = _node_ids(scene, "vtkMRMLColorTableNode")
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__dicyc_tmp_mask")
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, ref_node
            )
            if not ok or labelmap.GetImageData() is None:
                raise DicycError(f"segment {segment.GetName()} could not be exported onto {ref_node.GetName()}.")
            mask_vol = volume_from_node(labelmap)
        finally:
            display = labelmap.GetDisplayNode()
            scene.RemoveNode(labelmap)
            if display is not None and display.GetScene() is not None:
                scene.RemoveNode(display)
            # the export makes a colour table for the labelmap: remove it with the labelmap
            for node_id in _node_ids(scene, "vtkMRMLColorTableNode") - colors_before:
                scene.RemoveNode(scene.GetNodeByID(node_id))
        if mask_vol.shape != reference.shape or not mask_vol.same_grid(reference, tol=1e-3):
            from dicyc.preprocess import resample_to_grid

            mask_vol = resample_to_grid(mask_vol.with_array((mask_vol.array != 0).astype(np.uint8)), reference,
                                        interpolation="nearest", default_value=0)
        out.append((segment_id, segment.GetName(), mask_vol.array != 0))
    return out


def _metrics_row(pred_vol, ref_vol, mask, label, source, data_range):
    from dicyc.metrics import evaluate_volumes

    row = {"segment": label, "source": source}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_volumes(pred_vol, ref_vol, mask=mask, data_range=data_range,
                                      pred_name="the prediction", ref_name="the reference")
        row.update(result)
        if caught:
            row["note"] = " ".join(str(w.message) for w in caught)
    except DicycError as exc:
        row.update({k: math.nan for k in ("mse", "psnr", "ssim", "ssim_hg", "mae", "nmi")})
        row["n_voxels"] = int(np.count_nonzero(mask)) if mask is not None else 0
        row["error"] = str(exc)
    return row


def roi_metrics(scene, pred_node, ref_node, segmentation_node=None, roi_node=None, segment_ids=None,
                data_range=None):
    """MSE, PSNR, SSIM, MAE (and SSIM(HG), NMI) of ``pred_node`` against ``ref_node`` per region.

    One row per segment of ``segmentation_node`` (or of ``segment_ids``), one for the Markups ROI
    box ``roi_node``, or — with neither — one for the whole volume. Masks are on the reference
    grid; the prediction is resampled (linear) onto it where the grids differ, exactly as
    ``dicyc evaluate --mask`` does (:func:`dicyc.metrics.evaluate_volumes`), so the numbers are
    the CLI's. Each row is a dict with ``segment``, ``source`` ("segmentation", "roi" or
    "volume"), the metric keys of :data:`dicyc.metrics.METRIC_KEYS`, ``resampled``, and
    ``error`` (one sentence, metrics NaN) for an empty or unusable region.
    """
    if pred_node is None or ref_node is None:
        raise DicycError("select both a synthetic and a reference volume.")
    pred_vol = volume_from_node(pred_node, copy=False)
    ref_vol = volume_from_node(ref_node, copy=False)
    rows = []
    if segmentation_node is not None:
        for segment_id, name, mask in segment_masks(scene, segmentation_node, ref_node, segment_ids):
            row = _metrics_row(pred_vol, ref_vol, mask, name, "segmentation", data_range)
            row["segment_id"] = segment_id
            rows.append(row)
    if roi_node is not None:
        rows.append(_metrics_row(pred_vol, ref_vol, roi_box_mask(ref_node, roi_node), roi_node.GetName(), "roi",
                                 data_range))
    if segmentation_node is None and roi_node is None:
        rows.append(_metrics_row(pred_vol, ref_vol, None, "whole volume", "volume", data_range))
    return rows


def metrics_table_node(scene, rows, name="DiCyc metrics", table_node=None):
    """A table node with columns Segment, MSE, PSNR, SSIM, MAE, Voxels (one row per region).

    Reuses ``table_node`` (its columns are replaced) or adds a new one. PSNR is ``inf`` for
    identical regions and NaN marks a region that could not be evaluated.
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    was = table_node.StartModify()
    table_node.RemoveAllColumns()
    table = table_node.GetTable()
    for title, key, cls, unit in TABLE_COLUMNS:
        column = getattr(vtk, cls)()
        column.SetName(title)
        for row in rows:
            value = row.get(key)
            if cls == "vtkStringArray":
                column.InsertNextValue(str(value if value is not None else ""))
            elif cls == "vtkIntArray":
                column.InsertNextValue(int(value or 0))
            else:
                column.InsertNextValue(math.nan if value is None else float(value))
        table_node.AddColumn(column)
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
    table_node.SetColumnDescription("MSE", "mean squared error, volume units squared (HU^2 for CT)")
    table_node.SetColumnDescription("PSNR", "peak signal-to-noise ratio, data range = reference max - min in the region")
    table_node.SetColumnDescription("SSIM", "structural similarity, slice-wise (axial), averaged over the region")
    table_node.SetColumnDescription("MAE", "mean absolute error, volume units (HU for CT)")
    table_node.SetColumnDescription("Voxels", "voxels evaluated")
    table_node.SetUseColumnNameAsColumnHeader(True)
    table.Modified()
    table_node.EndModify(was)
    return table_node


def _format_cell(value):
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def table_rows(table_node):
    """(header, rows) of a table node's vtkTable, values as Python objects."""
    table = table_node.GetTable()
    header = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = []
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            value = column.GetValue(r)
            if isinstance(column, vtk.vtkStringArray):
                row.append(str(value))
            elif isinstance(column, (vtk.vtkIntArray, vtk.vtkLongArray, vtk.vtkLongLongArray)):
                row.append(int(value))
            else:
                row.append(float(value))
        rows.append(row)
    return header, rows


def export_table_csv(table_node, path):
    """Write the table as CSV (header row, full float precision, ``inf``/``nan`` spelled out),
    atomically; returns the path."""
    from dicyc.atomic import write_text

    header, rows = table_rows(table_node)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_format_cell(v) for v in row])
    path = Path(path)
    try:
        write_text(path, buffer.getvalue())
    except OSError as exc:
        raise DicycError(f"could not write {path}: {exc.strerror or exc}.") from None
    return path
