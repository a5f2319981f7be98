"""DiCyc Training logic on real MRML nodes (slicer-core) with a real ``dicyc train`` subprocess.

The training runs are tiny (4-channel networks, one residual block, 32-pixel slices at 8 mm,
a handful of iterations on two 12-slice synthetic volumes) so the suite stays light on CPU.
"""

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from DiCycTrainingLib.logic import (  # noqa: E402
    MAX_LOSS_ROWS,
    PROGRESS_FILE,
    RECENT_LOSS_ROWS,
    TrainingLogic,
    TrainingState,
    volume_from_node,
)
from dicyc.background import pid_alive  # noqa: E402
from dicyc.cli import build_parser  # noqa: E402
from dicyc.errors import DicycError  # noqa: E402
from dicyc.volume import Volume, read_volume, write_volume  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("safetensors") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="training needs torch and safetensors")

#: the smallest networks and data space that still train (seconds, not minutes, on a busy CPU)
TINY = {"ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32, "spacing": 8, "device": "cpu"}
RUN_TIMEOUT = 420


# ===================================================================== fixtures and helpers
@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """An MR-like and a CT-like head phantom: 12 slices of 40 x 40 voxels, 2 mm."""
    folder = tmp_path_factory.mktemp("volumes")
    z, y, x = np.mgrid[0:12, 0:40, 0:40].astype(np.float32)
    r = np.sqrt(((x - 20) / 15.0) ** 2 + ((y - 19) / 17.0) ** 2 + ((z - 6) / 14.0) ** 2)
    rng = np.random.default_rng(0)
    mr = np.where(r < 1.0, 280.0, 0.0) + np.where(r < 0.75, 180.0, 0.0) - np.where(r < 0.2, 150.0, 0.0)
    mr = (mr + rng.normal(0.0, 8.0, r.shape)).clip(0).astype(np.float32)
    ct = np.full(r.shape, -1000.0)
    ct[r < 1.0] = 40.0
    ct[(r >= 0.82) & (r < 1.0)] = 1100.0
    ct[r < 0.2] = 10.0
    paths = {"mr": folder / "mr.nii.gz", "ct": folder / "ct.nii.gz"}
    write_volume(Volume(mr, (2.0, 2.0, 2.0), (-40.0, -40.0, -12.0)), paths["mr"])
    write_volume(Volume(ct.astype(np.int16), (2.0, 2.0, 2.0), (-40.0, -40.0, -12.0)), paths["ct"])
    return paths


@pytest.fixture
def child_env(tmp_path):
    """Environment additions for training subprocesses: a private cache."""
    return {"DICYC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def poll_until(logic, condition, timeout=RUN_TIMEOUT, interval=0.2, seen=None):
    """Poll like the widget's QTimer until ``condition(state)``; returns the state."""
    deadline = time.monotonic() + timeout
    while True:
        state = logic.poll()
        if seen is not None:
            seen.append(state.fraction)
        if condition(state):
            return state
        if state.finished or time.monotonic() > deadline:  # ended otherwise, or too slow
            logic.stop()
            tail = "\n".join(state.log[-20:])
            pytest.fail(f"training did not reach the expected state (error={state.error!r}):\n{tail}")
        time.sleep(interval)


def add_volume_node(scene, array, ijk_to_ras, name):
    """A scalar volume node holding ``array`` (z, y, x) with the given 4x4 IJK-to-RAS matrix."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    flat = np.ascontiguousarray(array).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=numpy_support.get_vtk_array_type(flat.dtype))
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            matrix.SetElement(i, j, float(ijk_to_ras[i][j]))
    node.SetIJKToRASMatrix(matrix)
    return node


def group_members(pgid):
    """Live processes of process group ``pgid`` (Linux /proc)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = data[data.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(name))
    return members


# ===================================================================== command line
def test_logic_build_command_maps_options_to_flags():
    options = {
        "ngf": 32, "n_blocks": 6, "ndf": 16, "slice_size": 96, "spacing": [1.5, 2.0], "batch_size": 2,
        "iterations": 1000, "checkpoint_every": 250, "device": "cuda:1", "modality_a": "T1", "modality_b": "CT",
        "augment": False, "epoch-length": 40, "lr": 0.0002, "seed": None,
    }
    command = TrainingLogic.build_command("dicyc", ["/d/a1.nii.gz", "/d/a_folder"], "/d/b.list", "/runs/x", options,
                                          python="/opt/PythonSlicer")
    assert command[:4] == ["/opt/PythonSlicer", "-m", "dicyc", "train"]
    args = build_parser().parse_args(command[3:])  # what the engine's own CLI makes of it
    assert args.method == "dicyc"
    assert args.a == ["/d/a1.nii.gz", "/d/a_folder"] and args.b == ["/d/b.list"]
    assert args.out == "/runs/x" and not args.resume
    assert (args.ngf, args.n_blocks, args.ndf, args.slice_size, args.batch_size) == (32, 6, 16, 96, 2)
    assert (args.iterations, args.checkpoint_every, args.epoch_length) == (1000, 250, 40)
    assert args.spacing == [1.5, 2.0] and args.lr == pytest.approx(2e-4)
    assert args.device == "cuda:1" and args.modality_a == "T1" and args.modality_b == "CT"
    assert args.augment is False and args.seed is None
    assert args.progress_jsonl == str(Path("/runs/x") / PROGRESS_FILE)
    assert "8.0" not in TrainingLogic.build_command("cyclegan", "a", "b", "o", {"spacing": 8.0})

    resume = TrainingLogic.build_command("ignored", None, None, "/runs/x", {"device": "cpu"}, resume=True)
    rargs = build_parser().parse_args(resume[3:])
    assert rargs.resume and rargs.out == "/runs/x" and rargs.device == "cpu"
    assert rargs.a is None and rargs.b is None and rargs.method is None

    with pytest.raises(DicycError, match="unknown training option"):
        TrainingLogic.build_command("cyclegan", "a", "b", "o", {"n_layers": 3})
    with pytest.raises(DicycError, match="log_every"):
        TrainingLogic.build_command("cyclegan", "a", "b", "o", {"log_every": 2})
    with pytest.raises(DicycError, match="both domains"):
        TrainingLogic.build_command("cyclegan", [], "b", "o")
    flags, config_only = TrainingLogic.split_options({"log_every": 2, "n-blocks": 3, "lambda_cycle": 5.0, "ngf": None})
    assert flags == {"n_blocks": 3} and config_only == {"log_every": 2, "lambda_cycle": 5.0}


def test_logic_methods_and_model_path(tmp_path):
    names = [name for name, _ in TrainingLogic.methods()]
    assert {"cyclegan", "dicyc"} <= set(names)
    assert all(description for _, description in TrainingLogic.methods())
    assert TrainingLogic.model_path(tmp_path) is None
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert TrainingLogic.model_path(tmp_path) == str(tmp_path / "model.safetensors")
    (tmp_path / "model_best.safetensors").write_bytes(b"x")
    assert TrainingLogic.model_path(tmp_path) == str(tmp_path / "model_best.safetensors")
    assert TrainingLogic.model_path(tmp_path, prefer="latest") == str(tmp_path / "model.safetensors")
    defaults = TrainingLogic.default_options()
    assert defaults["device"] == "auto" and defaults["slice_size"] % 4 == 0


def test_logic_training_state_follows_events_and_resumed_history():
    state = TrainingState()
    state.apply_all([
        {"event": "start", "iteration": 0, "total_iterations": 10, "epoch": 0},
        {"event": "iteration", "iteration": 2, "total_iterations": 10, "losses": {"G": 3.0, "D": 0.5}, "eta_s": 8.0},
        {"event": "checkpoint", "iteration": 3, "total_iterations": 10},
        {"event": "iteration", "iteration": 4, "total_iterations": 10, "losses": {"G": 2.0, "D": 0.4}, "eta_s": 6.0},
        {"event": "log", "message": "a line"},
    ])
    assert state.fraction == pytest.approx(0.4) and state.eta_s == 6.0 and state.checkpoint_iteration == 3
    assert [row["iteration"] for row in state.history] == [2, 4] and state.new_log == ["a line"]
    assert state.loss_names == ["G", "D"] and "4/10" in state.status_text()
    # a resumed process starts again at the checkpoint (3): the losses logged after it are replaced
    state.apply_all([
        {"event": "start", "iteration": 3, "total_iterations": 10},
        {"event": "iteration", "iteration": 4, "total_iterations": 10, "losses": {"G": 1.5, "D": 0.3}},
        {"event": "preview", "iteration": 5, "path": "/p/epoch_0001.png"},
        {"event": "done", "iteration": 10, "total_iterations": 10, "path": "/p/model.safetensors", "message": "finished"},
    ])
    assert state.start_iteration == 3 and [row["iteration"] for row in state.history] == [2, 4]
    assert state.history[-1]["losses"]["G"] == 1.5 and state.preview == "/p/epoch_0001.png"
    assert state.done and state.finished and state.fraction == 1.0 and state.model == "/p/model.safetensors"
    failed = TrainingState().apply_all([{"event": "error", "message": "bad input."}])
    assert failed.finished and failed.error == "bad input." and failed.status_text().startswith("Failed")


def _iterations(state, first, last, names=("G", "D"), scale=1.0):
    state.apply_all([{"event": "iteration", "iteration": i, "total_iterations": 100000,
                      "losses": {name: scale * (k + 1) / i for k, name in enumerate(names)}}
                     for i in range(first, last + 1)])
    return state


def _column(table, name):
    column = table.GetTable().GetColumnByName(name)
    return [column.GetValue(r) for r in range(column.GetNumberOfTuples())]


def test_logic_loss_plot_appends_new_rows_and_thins_old_ones(scene):
    logic, state = TrainingLogic(), TrainingState()
    table, chart = logic.update_loss_plot(scene, _iterations(state, 1, 10))
    vtable, columns = table.GetTable(), [table.GetTable().GetColumn(c) for c in range(3)]
    assert table.GetNumberOfRows() == 10 and _column(table, "iteration") == list(range(1, 11))

    # a poll with new rows appends them: same vtkTable, same column arrays, old values untouched
    again = logic.update_loss_plot(scene, _iterations(state, 11, 14))
    assert again == (table, chart) and table.GetTable() is vtable
    assert [vtable.GetColumn(c) for c in range(3)] == columns
    assert _column(table, "iteration") == list(range(1, 15))
    assert _column(table, "D") == pytest.approx([2.0 / i for i in range(1, 15)])

    # a long run: at most MAX_LOSS_ROWS rows, the newest in full, the older evenly thinned
    _iterations(state, 15, 10000)
    logic.update_loss_plot(scene, state)
    shown = [int(v) for v in _column(table, "iteration")]
    assert len(shown) <= MAX_LOSS_ROWS // 2 and shown[0] == 1
    assert shown[-RECENT_LOSS_ROWS:] == list(range(10000 - RECENT_LOSS_ROWS + 1, 10001))
    older = np.diff(shown[: -RECENT_LOSS_ROWS])
    assert len(set(older)) == 1 and older[0] > 1  # one stride, a power of two
    assert (older[0] & (older[0] - 1)) == 0
    assert _column(table, "G") == pytest.approx([1.0 / i for i in shown])
    vtable = table.GetTable()
    logic.update_loss_plot(scene, _iterations(state, 10001, 10005))
    assert table.GetTable() is vtable and int(_column(table, "iteration")[-1]) == 10005  # appended again
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2

    # a loss that appears later gets its column (NaN before it was logged) and its series
    state.apply_all([{"event": "iteration", "iteration": 10006, "losses": {"G": 1.0, "D": 2.0, "idt": 0.5}}])
    table, chart = logic.update_loss_plot(scene, state)
    idt = _column(table, "idt")
    assert math.isnan(idt[0]) and idt[-1] == 0.5 and chart.GetNumberOfPlotSeriesNodes() == 3


def test_logic_loss_plot_follows_a_resume_and_a_scene_close(scene):
    logic, state = TrainingLogic(), TrainingState()
    _iterations(state, 1, 6)
    table, chart = logic.update_loss_plot(scene, state)
    # a resumed process starts again from its checkpoint (4) and logs iterations 5, 6 anew
    state.apply_all([{"event": "start", "iteration": 4, "total_iterations": 100000}])
    _iterations(state, 5, 6, scale=10.0)
    assert len(state.history) == 6  # as many rows as before: only the edit count tells them apart
    logic.update_loss_plot(scene, state)
    assert _column(table, "G")[-2:] == pytest.approx([10.0 / 5, 10.0 / 6])

    scene.Clear(0)  # File / Close scene: the plot nodes are gone
    table2, chart2 = logic.update_loss_plot(scene, state)
    assert scene.IsNodePresent(table2) and scene.IsNodePresent(chart2)
    assert _column(table2, "iteration") == list(range(1, 7))
    assert chart2.GetNumberOfPlotSeriesNodes() == 2


HOLD_LOCK = """
import sys, time
from dicyc.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_logic_start_and_resume_refuse_a_run_folder_another_trainer_holds(tmp_path, volumes):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
    logic = TrainingLogic()
    try:
        assert holder.stdout.readline().strip() == "held"
        sentence = logic.in_use(out)
        assert sentence and "is in use by another training (pid" in sentence and "\n" not in sentence
        with pytest.raises(DicycError, match="is in use by another training"):
            logic.resume(out)
        with pytest.raises(DicycError, match="is in use by another training"):
            logic.start("cyclegan", [str(volumes["mr"])], [str(volumes["ct"])], out, TINY)
        assert logic.process is None  # nothing was started
    finally:
        holder.kill()
        holder.wait(10)
    assert logic.in_use(out) is None and logic.in_use(tmp_path / "missing") is None


# ===================================================================== scene volumes as inputs
def test_logic_scene_volume_nodes_become_files_with_exact_geometry(scene, volumes, tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 2000, size=(7, 9, 11)).astype(np.int16)
    angle = math.radians(17.0)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1.0]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    ijk_to_ras[:3, 3] = [12.5, -30.25, 7.0]
    oblique = add_volume_node(scene, array, ijk_to_ras, "MR oblique (scan 1)")
    float_array = rng.normal(size=(5, 6, 4)).astype(np.float32)
    floats = add_volume_node(scene, float_array, np.diag([1.0, 1.0, 1.0, 1.0]), "T2")

    # a node under a linear transform: the file holds what the user sees (world coordinates)
    moved = add_volume_node(scene, array, ijk_to_ras, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 5.0)
    shift.SetElement(2, 3, -3.0)
    transform.SetMatrixTransformToParent(shift)
    moved.SetAndObserveTransformNodeID(transform.GetID())

    work = tmp_path / "inputs"
    specs = TrainingLogic.domain_inputs(scene, [oblique, floats.GetID(), str(volumes["mr"]), moved], work, prefix="A")
    assert len(specs) == 4 and specs[2] == str(volumes["mr"])
    for spec in (specs[0], specs[1], specs[3]):
        assert Path(spec).parent == work and spec.endswith(".nrrd")
    assert Path(specs[0]).name.startswith("A00_MR_oblique")

    back = read_volume(specs[0])
    assert back.array.dtype == np.int16 and np.array_equal(back.array, array)
    np.testing.assert_allclose(back.ijk_to_ras(), ijk_to_ras, atol=1e-9)
    back_floats = read_volume(specs[1])
    assert back_floats.array.dtype == np.float32 and np.array_equal(back_floats.array, float_array)
    np.testing.assert_allclose(back_floats.ijk_to_ras(), np.eye(4), atol=1e-12)
    expected_moved = ijk_to_ras.copy()
    expected_moved[:3, 3] += [5.0, 0.0, -3.0]
    np.testing.assert_allclose(read_volume(specs[3]).ijk_to_ras(), expected_moved, atol=1e-9)
    # the node → Volume conversion itself keeps IJK-to-RAS exactly
    np.testing.assert_allclose(volume_from_node(oblique).ijk_to_ras(), ijk_to_ras, atol=1e-12)

    with pytest.raises(DicycError, match="does not exist"):
        TrainingLogic.domain_inputs(scene, [str(tmp_path / "missing.nii.gz")], work, prefix="B")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(DicycError, match="no image data"):
        TrainingLogic.domain_inputs(scene, [empty], work, prefix="B")


# ===================================================================== real training runs
@needs_torch
def test_logic_training_run_reports_progress_losses_preview_and_plot(scene, volumes, tmp_path, child_env):
    logic = TrainingLogic()
    out = tmp_path / "run"
    users = tmp_path / "options.json"  # the panel's options file: merged under the options without a flag
    users.write_text(json.dumps({"lambda_cycle": 5.0, "log_every": 1}))
    options = dict(TINY, iterations=6, checkpoint_every=3, epoch_length=3, log_every=2, config=str(users))
    started = logic.start("cyclegan", [str(volumes["mr"])], [str(volumes["ct"])], out, options, env=child_env)
    assert started.running and logic.running
    assert json.loads((out / "slicer_options.json").read_text()) == {"lambda_cycle": 5.0, "log_every": 2}
    fractions = []
    state = poll_until(logic, lambda s: s.finished, seen=fractions)

    assert state.done and state.error is None and state.returncode == 0 and not logic.running
    assert state.total == 6 and state.iteration == 6 and state.fraction == 1.0
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
    assert [row["iteration"] for row in state.history] == [2, 4, 6]
    assert state.loss_names and all(math.isfinite(v) for row in state.history for v in row["losses"].values())
    assert state.preview and state.preview.endswith("epoch_0002.png") and Path(state.preview).is_file()
    assert state.checkpoint_iteration == 6 and state.start_iteration == 0
    assert Path(state.model).is_file() and logic.model_path(out) in (str(out / "model_best.safetensors"), state.model)
    assert "cyclegan" in logic.model_summary(logic.model_path(out))
    assert json.loads((out / "config.json").read_text())["config"]["lambda_cycle"] == 5.0
    kinds = [json.loads(line)["event"] for line in (out / PROGRESS_FILE).read_text().splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "done" and {"iteration", "checkpoint", "preview"} <= set(kinds)

    # the live loss plot: a table node (iteration + one column per loss) and a chart with one series per loss
    table, chart = logic.update_loss_plot(scene, state)
    names = state.loss_names
    assert table.IsA("vtkMRMLTableNode") and chart.IsA("vtkMRMLPlotChartNode")
    assert table.GetNumberOfRows() == 3 and table.GetNumberOfColumns() == 1 + len(names)
    assert table.GetColumnName(0) == "iteration"
    assert [table.GetTable().GetValue(r, 0).ToDouble() for r in range(3)] == [2.0, 4.0, 6.0]
    first = names[0]
    column = table.GetTable().GetColumnByName(first)
    assert [column.GetValue(r) for r in range(3)] == pytest.approx([row["losses"][first] for row in state.history])
    assert chart.GetNumberOfPlotSeriesNodes() == len(names)
    for i in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(i)
        assert series.GetTableNodeID() == table.GetID() and series.GetXColumnName() == "iteration"
        assert series.GetYColumnName() in names
    # updating again reuses the same nodes
    again = logic.update_loss_plot(scene, state)
    assert again == (table, chart)
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == len(names)
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1


@needs_torch
def test_logic_stop_leaves_no_process_and_resume_continues_to_done(scene, volumes, tmp_path, child_env):
    logic = TrainingLogic()
    out = tmp_path / "run"
    options = dict(TINY, iterations=24, checkpoint_every=3, epoch_length=24, log_every=3)
    logic.start("cyclegan", [str(volumes["mr"])], [str(volumes["ct"])], out, options, env=child_env)
    pid = logic.pid
    poll_until(logic, lambda s: (s.checkpoint_iteration or 0) >= 3, interval=0.05)
    assert logic.stop() is True
    state = logic.poll()
    assert state.cancelled and not state.done and not logic.running
    assert not pid_alive(pid) and group_members(pid) == []
    assert "Stopped" in state.status_text()
    assert logic.has_checkpoint(out)
    with pytest.raises(DicycError, match="already holds a training run"):
        logic.start("cyclegan", [str(volumes["mr"])], [str(volumes["ct"])], out, options, env=child_env)

    state = logic.resume(out, env=child_env)
    assert state.history and state.history[0]["iteration"] == 3  # the first process's losses are kept
    state = poll_until(logic, lambda s: s.finished)
    assert state.done and state.error is None and state.returncode == 0
    assert state.start_iteration is not None and 0 < state.start_iteration < 24 and state.start_iteration % 3 == 0
    assert state.iteration == 24 and state.total == 24
    assert [row["iteration"] for row in state.history] == list(range(3, 25, 3))
    assert Path(logic.model_path(out)).is_file()
    table, chart = logic.update_loss_plot(scene, state)
    assert table.GetNumberOfRows() == 8


@needs_torch
def test_logic_failed_run_reports_one_clear_sentence(volumes, tmp_path, child_env):
    listing = tmp_path / "domain_a.txt"
    listing.write_text(str(tmp_path / "no_such_volume.nii.gz") + "\n")
    logic = TrainingLogic()
    logic.start("cyclegan", [str(listing)], [str(volumes["ct"])], tmp_path / "run", TINY, env=child_env)
    state = poll_until(logic, lambda s: s.finished, timeout=120)
    assert not state.done and state.error and state.returncode not in (None, 0)
    assert "no_such_volume" in state.error and "Traceback" not in state.error


# ===================================================================== static checks
def _repo_files(pattern):
    skip = {".venv", ".git", "build", "dist", ".pytest_cache", ".hypothesis"}
    return [p for p in REPO.rglob(pattern) if not (set(p.relative_to(REPO).parts) & skip)]


def test_slicer_ui_files_parse_and_hold_the_training_panel():
    ui_files = _repo_files("*.ui")
    assert any(p.name == "DiCycTraining.ui" for p in ui_files)
    for path in ui_files:
        root = ET.parse(path).getroot()  # every .ui parses
        assert root.tag == "ui" and root.find("widget") is not None, path
    training = ET.parse(REPO / "DiCycTraining" / "Resources" / "UI" / "DiCycTraining.ui").getroot()
    widgets = {w.get("name"): w.get("class") for w in training.iter("widget")}
    expected = {
        "domainAPathLineEdit": "ctkPathLineEdit", "domainANodesComboBox": "qMRMLCheckableNodeComboBox",
        "domainAModalityComboBox": "QComboBox", "domainBPathLineEdit": "ctkPathLineEdit",
        "domainBNodesComboBox": "qMRMLCheckableNodeComboBox", "domainBModalityComboBox": "QComboBox",
        "methodComboBox": "QComboBox", "ngfSpinBox": "QSpinBox", "nBlocksSpinBox": "QSpinBox",
        "sliceSizeSpinBox": "QSpinBox", "spacingSpinBox": "QDoubleSpinBox", "batchSizeSpinBox": "QSpinBox",
        "iterationsSpinBox": "QSpinBox", "checkpointEverySpinBox": "QSpinBox", "deviceComboBox": "QComboBox",
        "outputDirectoryPathLineEdit": "ctkPathLineEdit", "startButton": "QPushButton", "stopButton": "QPushButton",
        "resumeButton": "QPushButton", "progressBar": "QProgressBar", "etaLabel": "QLabel",
        "previewLabel": "QLabel", "useForSynthesisButton": "QPushButton",
    }
    for name, cls in expected.items():
        assert widgets.get(name) == cls, f"{name}: expected a {cls}, found {widgets.get(name)}"
    # the node selectors get the scene from the top-level qMRMLWidget
    receivers = {c.findtext("receiver") for c in training.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert {"domainANodesComboBox", "domainBNodesComboBox"} <= receivers


def test_slicer_lib_folders_import_no_qt_ctk_or_scripted_module():
    forbidden = ("qt", "ctk", "slicer.ScriptedLoadableModule", "ScriptedLoadableModule", "qSlicer", "slicer.qSlicer")
    lib_files = [p for p in _repo_files("*.py") if any(part.endswith("Lib") for part in p.relative_to(REPO).parts[:-1])]
    assert any("DiCycTrainingLib" in str(p) for p in lib_files)
    problems = []
    for path in lib_files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not problems, "\n".join(problems)
    # the logic takes the scene as a parameter: no application singletons (absent under slicer-core)
    singletons = {"app", "mrmlScene", "modules"}
    for path in lib_files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in singletons
                    and isinstance(node.value, ast.Name) and node.value.id == "slicer"):
                problems.append(f"{path.relative_to(REPO)}:{node.lineno} uses slicer.{node.attr}")
    assert not problems, "\n".join(problems)
