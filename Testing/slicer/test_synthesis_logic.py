"""DiCycSynthesis logic on real MRML nodes (slicer-core): geometry, synthesis, views, ROI metrics.

Every test name contains "logic" so ``pytest -k "slicer or logic"`` selects them. Volumes are
small and the model is tiny (ngf 4, one residual block): the suite stays light on two cores.
"""

import ast
import csv
import json
import math
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

import DiCycSynthesisLib as L  # noqa: E402
from DiCycCommonLib.nodes import matrix_to_numpy, numpy_to_matrix  # noqa: E402
from DiCycSynthesisLib.process import EVENTS_NAME  # noqa: E402
from dicyc.errors import DicycError  # noqa: E402
from dicyc.volume import Volume, write_volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "DiCycSynthesis"


def _assert_same_matrix(a, b):
    assert np.array_equal(np.asarray(a), np.asarray(b)), f"matrices differ:\n{a}\n{b}"


def _ras_of(node, ijk):
    return (L.ijk_to_ras_of(node) @ np.array([*ijk, 1.0]))[:3]


# ===================================================================== node <-> Volume
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_logic_node_volume_roundtrip_keeps_ijk_to_ras_exactly(scene, mr_volume, dtype, tmp_path):
    vol = mr_volume(shape=(5, 9, 7), spacing=(0.7, 1.3, 3.5))
    vol = vol.with_array((vol.array * 3).astype(dtype))
    node = L.add_volume_node(scene, vol, "oblique")
    # Volume -> node: the node's IJKToRAS is exactly the volume's
    _assert_same_matrix(L.ijk_to_ras_of(node), vol.ijk_to_ras())
    # node -> Volume -> node: exact, voxels and matrix
    back = L.volume_from_node(node)
    assert back.array.dtype == vol.array.dtype and np.array_equal(back.array, vol.array)
    assert back.spacing == vol.spacing and back.origin == vol.origin
    assert np.array_equal(back.direction, vol.direction)
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")
    L.update_node_from_volume(other, back)
    _assert_same_matrix(L.ijk_to_ras_of(other), L.ijk_to_ras_of(node))
    # agrees with the engine's own decomposition of Slicer's matrix
    decomposed = Volume.from_ijk_to_ras(back.array, L.ijk_to_ras_of(node))
    assert np.allclose(decomposed.ijk_to_ras(), vol.ijk_to_ras(), atol=1e-12)
    # (k, j, i) indexing: voxel (i, j, k) sits where both conventions say
    i, j, k = 5, 2, 3
    assert np.allclose(_ras_of(node, (i, j, k)), (vol.ijk_to_ras() @ [i, j, k, 1])[:3])
    assert L.volume_from_node(node).array[k, j, i] == vol.array[k, j, i]
    # Slicer's own NRRD reader sees the engine's file with the same geometry and voxels
    write_volume(vol, tmp_path / "v.nrrd")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "v.nrrd"))
    read = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read")
    assert storage.ReadData(read)
    assert np.allclose(L.ijk_to_ras_of(read), vol.ijk_to_ras(), atol=1e-9)
    assert np.array_equal(L.volume_from_node(read).array, vol.array)


def test_logic_display_nodes_on_a_bare_scene(bare_scene, mr_volume):
    """Without Slicer's colour tables a display node still gets a real grey table; CT window set."""
    node = L.add_volume_node(bare_scene, mr_volume(), "v")
    display = node.GetDisplayNode()
    assert display is not None and display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert bare_scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None
    L.set_ct_window(bare_scene, node)
    assert (display.GetWindow(), display.GetLevel()) == (400.0, 40.0) and not display.GetAutoWindowLevel()
    L.set_ct_window(bare_scene, node, "bone")
    assert (display.GetWindow(), display.GetLevel()) == L.CT_WINDOWS["bone"]
    color = L.error_color_node(bare_scene)
    assert L.error_color_node(bare_scene) is color  # one per scene
    assert color.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    color.GetColor(0, rgba)
    assert rgba[:3] == [0.0, 0.0, 0.0]
    color.GetColor(255, rgba)
    assert rgba[:3] == [1.0, 1.0, 1.0]


# ===================================================================== synthesis
def test_logic_synthesis_in_process_overlays_input(scene, mr_volume, tiny_model):
    from dicyc.modelfile import load_model
    from dicyc.synthesize import synthesize_volume_with_info

    vol = mr_volume()
    node = L.add_volume_node(scene, vol, "MR")
    out, info = L.synthesize_in_process(scene, node, tiny_model, device="cpu", precision="fp32", batch=4)
    assert out is not node and out.GetName().startswith("MR synthetic CT")
    _assert_same_matrix(L.ijk_to_ras_of(out), L.ijk_to_ras_of(node))
    result = L.volume_from_node(out)
    assert result.shape == vol.shape
    expected, _ = synthesize_volume_with_info(load_model(tiny_model), vol, device="cpu", precision="fp32", batch=4)
    assert np.allclose(result.array, expected.array, atol=1e-3)
    display = out.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == L.CT_WINDOWS[L.DEFAULT_CT_WINDOW]
    assert not display.GetAutoWindowLevel()
    assert out.GetAttribute("DiCyc.TargetModality") == "CT"
    assert info["slices"] == vol.shape[0]
    # re-running into the same node replaces its content, keeps the node
    again, _ = L.synthesize_in_process(scene, node, tiny_model, device="cpu", precision="fp32", output_node=out)
    assert again is out


def test_logic_synthesis_of_a_2p5d_model_overlays_input(scene, mr_volume, model_card, tmp_path):
    """A 2.5-D model (3 neighbouring slices as channels) synthesises through the same logic, onto the input's grid."""
    import torch

    from dicyc.modelfile import save_model
    from dicyc.nets import build_generator

    card = model_card()
    arch = dict(card["architecture"], input_nc=3, output_nc=3)
    torch.manual_seed(2)
    path = save_model(tmp_path / "k3.safetensors", {"G_AB": build_generator(arch), "G_BA": build_generator(arch)},
                      dict(card, architecture=arch, context_slices=3))
    summary = L.model_summary(path)
    assert summary["context_slices"] == 3 and "2.5-D (3 neighbouring slices)" in summary["text"]
    vol = mr_volume()
    node = L.add_volume_node(scene, vol, "MR")
    out, info = L.synthesize_in_process(scene, node, path, device="cpu", precision="fp32")
    _assert_same_matrix(L.ijk_to_ras_of(out), L.ijk_to_ras_of(node))
    result = L.volume_from_node(out)
    assert result.shape == vol.shape and np.isfinite(result.array).all() and info["context_slices"] == 3


def _run_to_end(logic, timeout=240.0):
    fractions = []
    deadline = time.monotonic() + timeout
    while True:
        status = logic.poll()
        fractions.append(status["fraction"])
        if not status["running"]:
            status = logic.poll()  # the last events after exit
            fractions.append(status["fraction"])
            return status, fractions
        assert time.monotonic() < deadline, "background synthesis did not finish"
        time.sleep(0.1)


def test_logic_background_synthesis_start_poll_finish(scene, mr_volume, tiny_model, tmp_path):
    vol = mr_volume()
    node = L.add_volume_node(scene, vol, "MR")
    cmd = L.SynthesisLogic.build_command(tiny_model, "in.nrrd", "out.nrrd", "a2b", "cpu", "fp32", 4, python="py")
    assert cmd[:4] == ["py", "-m", "dicyc", "synthesize"]
    assert cmd[cmd.index("--progress-jsonl") + 1] == "out.nrrd.progress.jsonl"
    assert cmd[cmd.index("--precision") + 1] == "fp32" and cmd[cmd.index("--batch") + 1] == "4"

    logic = L.SynthesisLogic()
    work = tmp_path / "work"
    logic.start(scene, node, tiny_model, device="cpu", precision="fp32", batch=2, work_dir=work)
    assert logic.running
    status, fractions = _run_to_end(logic)
    assert status["returncode"] == 0 and status["error"] is None, logic.log
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    events = [json.loads(line) for line in (work / EVENTS_NAME).read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    done = [e["iteration"] for e in events if e["event"] == "iteration"]
    # one event per batch of at most 2 slices (the CPU path probe may run a batch of 1 first), ending at all 6
    steps = [b - a for a, b in zip([0] + done, done)]
    assert done[-1] == 6 and all(1 <= step <= 2 for step in steps) and len(done) >= 3
    out = logic.finish(scene)
    _assert_same_matrix(L.ijk_to_ras_of(out), L.ijk_to_ras_of(node))
    assert (out.GetDisplayNode().GetWindow(), out.GetDisplayNode().GetLevel()) == (400.0, 40.0)
    in_process, _ = L.synthesize_in_process(scene, node, tiny_model, device="cpu", precision="fp32", batch=2)
    assert np.allclose(L.volume_from_node(out).array, L.volume_from_node(in_process).array, atol=1e-3)


def test_logic_background_synthesis_failure_and_cancel(scene, mr_volume, tiny_model, model_card, tmp_path):
    from dicyc.background import _group_members, pid_alive

    node = L.add_volume_node(scene, mr_volume(), "MR")
    logic = L.SynthesisLogic()
    # a failure: the model file is not a model -> one sentence, and the temp folder is removed
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a model")
    with pytest.raises(DicycError, match="not a DiCyc model file"):
        logic.start(scene, node, bad)
    flat = L.add_volume_node(scene, Volume(np.zeros((3, 8, 8), np.float32)), "flat")
    with pytest.raises(DicycError, match="volume flat is constant"):
        logic.start(scene, flat, tiny_model)
    assert logic.process is None
    # a failure inside the child: a model without the b2a generator, asked for b2a
    from dicyc.modelfile import save_model
    from dicyc.nets import build_generator

    one_way = tmp_path / "a2b-only.safetensors"
    save_model(one_way, {"G_AB": build_generator(dict(model_card()["architecture"]))}, model_card())
    logic.start(scene, node, one_way, direction="b2a", device="cpu")
    status, _ = _run_to_end(logic)
    assert status["returncode"] == 1 and "holds no generator for b2a" in status["error"]
    with pytest.raises(DicycError) as failed:
        logic.finish(scene)
    assert str(failed.value).startswith("synthesis failed: ") and "dicyc synthesize: error" not in str(failed.value)
    assert "holds no generator for b2a" in str(failed.value)
    # cancel while the child is still starting (importing torch): nothing may be left
    logic.start(scene, node, tiny_model, device="cpu", precision="fp32")
    work = logic.work_dir
    pid = logic.process.pid
    time.sleep(0.3)
    assert logic.running
    assert logic.cancel() is True
    assert not logic.running and not pid_alive(pid)
    members = _group_members(pid)
    assert members in (None, [])
    assert not work.exists()
    with pytest.raises(DicycError, match="synthesis failed"):
        logic.finish(scene)


# ===================================================================== comparison views
def test_logic_checkerboard_node_values(scene, mr_volume):
    from dicyc.preprocess import resample_to_grid
    from dicyc.views import checkerboard, display_window, to_unit

    a = mr_volume(seed=1)
    b = a.with_array((a.array * -4.0 + 1000.0).astype(np.float32))  # another "modality" on the same grid
    a_node, b_node = L.add_volume_node(scene, a, "A"), L.add_volume_node(scene, b, "B")
    board_node = L.make_checkerboard_node(scene, a_node, b_node, tiles=4)
    _assert_same_matrix(L.ijk_to_ras_of(board_node), L.ijk_to_ras_of(a_node))
    expected = checkerboard(to_unit(a.array, display_window(a.array)), to_unit(b.array, display_window(b.array)), 4)
    got = L.volume_from_node(board_node).array
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    # tiles alternate between A and B in all three axes
    assert np.array_equal(got[0, 0, 0], to_unit(a.array, display_window(a.array))[0, 0, 0])
    display = board_node.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    # B on another grid is resampled onto A's grid first
    shifted = Volume(b.array, b.spacing, tuple(np.add(b.origin, (1.5, -2.0, 0.5))), b.direction)
    c_node = L.add_volume_node(scene, shifted, "B shifted")
    board2 = L.volume_from_node(L.make_checkerboard_node(scene, a_node, c_node, tiles=3)).array
    b_on_a = resample_to_grid(shifted, a)
    assert np.allclose(board2, checkerboard(to_unit(a.array, display_window(a.array)),
                                            to_unit(b_on_a.array, display_window(b_on_a.array)), 3), atol=1e-6)


def test_logic_error_node_values(scene, mr_volume):
    from dicyc.preprocess import resample_to_grid

    syn = mr_volume(seed=2)
    ref = syn.with_array((syn.array + np.random.default_rng(5).normal(0, 20, syn.shape)).astype(np.float32))
    s_node, r_node = L.add_volume_node(scene, syn, "synthetic"), L.add_volume_node(scene, ref, "reference")
    err_node = L.make_error_node(scene, s_node, r_node)
    _assert_same_matrix(L.ijk_to_ras_of(err_node), L.ijk_to_ras_of(s_node))
    err = L.volume_from_node(err_node).array
    assert np.array_equal(err, np.abs(syn.array.astype(np.float32) - ref.array.astype(np.float32)))
    display = err_node.GetDisplayNode()
    assert display.GetColorNodeID() == L.error_color_node(scene).GetID()
    assert display.GetWindowLevelMin() == 0.0
    assert np.isclose(display.GetWindowLevelMax(), np.percentile(err[err > 0], 99.0))
    assert display.GetApplyThreshold() and display.GetLowerThreshold() > 0
    # a reference on another grid: resampled onto the synthetic grid, uncovered voxels 0
    moved = Volume(ref.array, ref.spacing, tuple(np.add(ref.origin, (0.0, 0.0, 6.0))), ref.direction)
    m_node = L.add_volume_node(scene, moved, "moved")
    err2 = L.volume_from_node(L.make_error_node(scene, s_node, m_node)).array
    on = resample_to_grid(moved, syn)
    covered = resample_to_grid(moved.with_array(np.ones(moved.shape, np.uint8)), syn, "nearest", 0).array.astype(bool)
    expected = np.where(covered, np.abs(syn.array - on.array), 0.0)
    assert not covered.all() and covered.any()
    assert np.allclose(err2, expected, atol=1e-4)


def test_logic_setup_overlay_sets_slice_composite_nodes(scene, slice_views, mr_volume):
    syn_node = L.add_volume_node(scene, mr_volume(seed=1), "synthetic")
    ref_node = L.add_volume_node(scene, mr_volume(seed=2), "reference")
    composites = L.slice_composite_nodes(scene)
    assert set(composites) == {"Red", "Yellow", "Green"}

    state = L.setup_overlay(scene, ref_node, syn_node, opacity=0.3, layout="reveal")
    for name, node in composites.items():
        assert node.GetBackgroundVolumeID() == ref_node.GetID()
        assert node.GetForegroundVolumeID() == syn_node.GetID()
        assert node.GetForegroundOpacity() == pytest.approx(0.3)
        assert state[name] == (ref_node.GetID(), syn_node.GetID(), pytest.approx(0.3))

    L.setup_overlay(scene, syn_node, ref_node, opacity=0.5, layout="side-by-side")
    red, yellow, green = composites["Red"], composites["Yellow"], composites["Green"]
    assert (red.GetBackgroundVolumeID(), red.GetForegroundVolumeID()) == (syn_node.GetID(), None)
    assert (yellow.GetBackgroundVolumeID(), yellow.GetForegroundVolumeID()) == (ref_node.GetID(), None)
    assert (green.GetBackgroundVolumeID(), green.GetForegroundVolumeID()) == (syn_node.GetID(), ref_node.GetID())
    assert all(n.GetLinkedControl() for n in composites.values())
    assert slice_views["Yellow"].GetSliceNode().GetOrientation() == "Axial"

    L.setup_overlay(scene, syn_node, ref_node, opacity=2.0, layout="reveal")  # opacity clipped to 1
    assert slice_views["Yellow"].GetSliceNode().GetOrientation() == "Sagittal"
    assert all(n.GetForegroundOpacity() == 1.0 for n in composites.values())
    with pytest.raises(ValueError):
        L.setup_overlay(scene, syn_node, ref_node, layout="diagonal")


def test_logic_comparison_views_are_given_back(scene, slice_views, mr_volume):
    """Compare changes layout, orientations and linked control; restoring gives the user's back,
    and leaves a view the comparison did not rotate wherever the user scrolled it meanwhile."""
    layout = slicer.vtkMRMLLayoutNode()
    scene.AddNode(layout)
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    red, yellow, green = (slice_views[n].GetSliceNode() for n in ("Red", "Yellow", "Green"))
    red.SetOrientation("Axial")
    yellow.SetOrientation("Sagittal")
    yellow.SetSliceOffset(7.0)
    green.SetOrientation("Coronal")
    syn_node = L.add_volume_node(scene, mr_volume(seed=1), "synthetic")
    ref_node = L.add_volume_node(scene, mr_volume(seed=2), "reference")

    saved = L.save_view_state(scene)
    L.setup_overlay(scene, syn_node, ref_node, layout="side-by-side")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    assert yellow.GetOrientation() == "Axial"
    assert all(n.GetLinkedControl() for n in L.slice_composite_nodes(scene).values())
    red.SetSliceOffset(5.0)  # the user scrolls during the comparison

    changed = L.restore_view_state(scene, saved)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView
    assert (red.GetOrientation(), yellow.GetOrientation(), green.GetOrientation()) == ("Axial", "Sagittal", "Coronal")
    assert yellow.GetSliceOffset() == pytest.approx(7.0) and red.GetSliceOffset() == pytest.approx(5.0)
    assert not any(n.GetLinkedControl() for n in L.slice_composite_nodes(scene).values())
    assert "Yellow" in changed and L.restore_view_state(scene, saved) == []  # nothing left to give back
    assert L.restore_view_state(scene, None) == []


def test_logic_user_models_folder_add_list_remove(tiny_model, tmp_path, monkeypatch):
    folder = tmp_path / "my models"
    monkeypatch.delenv(L.MODELS_ENV, raising=False)
    assert L.user_models(folder) == [] and L.user_models_folder(folder) == folder
    assert L.user_models_folder(None).parts[-2:] == (".dicyc", "models")
    added = L.add_model(tiny_model, folder)
    assert added == folder / tiny_model.name and added.read_bytes() == tiny_model.read_bytes()
    assert L.add_model(added, folder) == added  # already there
    entries = L.list_models(folder)
    assert [e["kind"] for e in entries].count("user") == 1
    assert entries[-1] == {"path": added, "name": tiny_model.name, "kind": "user"}
    assert all(e["kind"] == "bundled" for e in entries[:-1])
    assert L.is_user_model(added, folder) and not L.is_user_model(tiny_model, folder)

    other = tmp_path / "elsewhere" / tiny_model.name
    other.parent.mkdir()
    other.write_bytes(b"\x80\x04 not a model")
    with pytest.raises(DicycError, match="never unpickles"):
        L.add_model(other, folder)  # only real model files go in
    with pytest.raises(DicycError, match="does not exist"):
        L.add_model(tmp_path / "missing.safetensors", folder)
    other.write_bytes(tiny_model.read_bytes())
    with pytest.raises(DicycError, match="already holds a model named"):
        L.add_model(other, folder)  # another file of that name: never overwritten
    bundled = [e["path"] for e in entries if e["kind"] == "bundled"]
    if bundled:
        with pytest.raises(DicycError, match="only models added there can be removed"):
            L.remove_model(bundled[0], folder)
    L.remove_model(added, folder)
    assert not added.exists() and L.user_models(folder) == []
    with pytest.raises(DicycError, match="not in your models folder"):
        L.remove_model(added, folder)


def _render(slice_logic, tmp_path, name, size=(96, 80)):
    """The slice view's composited image (what Slicer draws in that view) written to a PNG and read back."""
    slice_node = slice_logic.GetSliceNode()
    slice_node.SetDimensions(size[0], size[1], 1)
    slice_logic.FitSliceToAll()
    producer = slice_logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    path = tmp_path / f"{name}.png"
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    out = reader.GetOutput()
    w, h, _ = out.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)
    return path, pixels


def test_logic_renders_comparison_view_offscreen(scene, slice_views, tmp_path):
    """Slicer's slice logic composites the views without a window: check the checkerboard and the
    reveal blend pixel by pixel in a PNG of the Red view."""
    shape = (5, 24, 30)
    a = Volume(np.full(shape, 1000.0, np.float32), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    a.array[0, 0, 0] = 0.0  # so A's display window is (0, 1000): A shows white
    b = a.with_array(np.zeros(shape, np.float32))
    b.array[0, 0, 0] = 1000.0  # B shows black
    a_node, b_node = L.add_volume_node(scene, a, "A"), L.add_volume_node(scene, b, "B")
    board = L.make_checkerboard_node(scene, a_node, b_node, tiles=3)
    board.GetDisplayNode().SetInterpolate(0)
    L.setup_overlay(scene, board, None, opacity=0.0, layout="reveal")
    red = slice_views["Red"]
    path, pixels = _render(red, tmp_path, "checkerboard")
    assert path.stat().st_size > 0
    # expected value of every pixel: the nearest voxel of the checkerboard at its RAS position
    xy_to_ras = matrix_to_numpy(red.GetSliceNode().GetXYToRAS())
    ras_to_ijk = np.linalg.inv(L.ijk_to_ras_of(board))
    values = L.volume_from_node(board).array
    h, w = pixels.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size), np.ones(xs.size)]).astype(float)
    ijk = (ras_to_ijk @ xy_to_ras @ pts)[:3]
    idx = np.round(ijk).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(values.shape[::-1])[:, None]), axis=0)
    clear = np.all(np.abs(ijk - np.round(ijk)) < 0.45, axis=0) & inside  # away from voxel borders
    expected = 255.0 * values[idx[2, clear], idx[1, clear], idx[0, clear]]
    grey = pixels[..., 0].ravel()[clear].astype(float)
    assert clear.sum() > 500
    assert set(np.unique(expected)) == {0.0, 255.0}  # both A and B tiles are in view
    assert np.abs(grey - expected).max() <= 1.0
    assert np.all(pixels.reshape(-1, pixels.shape[-1])[~inside, 0] == 0)  # outside the volume: black

    # reveal: A (white) under B (black) at opacity 0.5 -> mid grey; 1 -> B; 0 -> A
    for opacity, level in ((0.0, 255), (0.5, 127.5), (1.0, 0)):
        L.setup_overlay(scene, a_node, b_node, opacity=opacity, layout="reveal")
        _, pixels = _render(red, tmp_path, f"reveal-{opacity}")
        centre = pixels[h // 2 - 5 : h // 2 + 5, w // 2 - 5 : w // 2 + 5, 0].astype(float)
        assert np.abs(centre - level).max() <= 1.5, (opacity, centre.min(), centre.max())


# ===================================================================== ROI metrics
def _segmentation_from_labels(scene, ref_node, labels, names):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ref_node)
    ref = L.volume_from_node(ref_node, copy=False)
    for value, name in zip(sorted(names), (names[v] for v in sorted(names))):
        lm = L.add_volume_node(scene, ref.with_array((labels == value).astype(np.uint8)), f"lm{value}",
                               node_class="vtkMRMLLabelMapVolumeNode")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg)
        segmentation = seg.GetSegmentation()
        segmentation.GetNthSegment(segmentation.GetNumberOfSegments() - 1).SetName(name)
        scene.RemoveNode(lm)
    return seg


def _ct_pair(mr_volume, seed=3):
    """A 'reference CT' and a 'synthetic CT' that differs by noise and a small bias."""
    base = mr_volume(shape=(6, 30, 26), seed=seed)
    ref = base.with_array((base.array * 4.0 - 900.0).astype(np.float32))
    rng = np.random.default_rng(seed + 10)
    pred = ref.with_array((ref.array + rng.normal(15.0, 30.0, ref.shape)).astype(np.float32))
    return pred, ref


def _cli_evaluate(pred_path, ref_path, mask_path):
    out = subprocess.run([sys.executable, "-m", "dicyc", "evaluate", "--pred", str(pred_path), "--ref", str(ref_path),
                          "--mask", str(mask_path), "--json"], capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_row_matches(row, expected):
    for key in ("mse", "psnr", "ssim", "ssim_hg", "mae", "nmi"):
        assert row[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    assert row["n_voxels"] == expected["n_voxels"]


def test_logic_roi_metrics_from_segmentation_equal_dicyc_evaluate(scene, mr_volume, tmp_path):
    from dicyc.metrics import evaluate_volumes

    pred, ref = _ct_pair(mr_volume)
    pred_node, ref_node = L.add_volume_node(scene, pred, "sCT"), L.add_volume_node(scene, ref, "CT")
    labels = np.zeros(ref.shape, np.uint8)
    labels[1:5, 8:16, 6:12] = 1  # "aorta"
    labels[0:6, 18:26, 10:18] = 2  # "spine"
    seg = _segmentation_from_labels(scene, ref_node, labels, {1: "aorta", 2: "spine"})
    masks = {name: m for _, name, m in L.segment_masks(scene, seg, ref_node)}
    assert np.array_equal(masks["aorta"], labels == 1) and np.array_equal(masks["spine"], labels == 2)
    n_nodes = scene.GetNumberOfNodes()
    rows = L.roi_metrics(scene, pred_node, ref_node, segmentation_node=seg)
    assert scene.GetNumberOfNodes() == n_nodes  # temporary labelmaps are removed
    assert [r["segment"] for r in rows] == ["aorta", "spine"]
    assert all(r["source"] == "segmentation" and "error" not in r for r in rows)
    for row, value in zip(rows, (1, 2)):
        _assert_row_matches(row, evaluate_volumes(pred, ref, mask=labels == value))
    # the same data as files through `dicyc evaluate --mask`
    write_volume(pred, tmp_path / "pred.nrrd")
    write_volume(ref, tmp_path / "ref.nrrd")
    write_volume(ref.with_array((labels == 1).astype(np.uint8)), tmp_path / "aorta.nrrd")
    _assert_row_matches(rows[0], _cli_evaluate(tmp_path / "pred.nrrd", tmp_path / "ref.nrrd", tmp_path / "aorta.nrrd"))
    # no region: one whole-volume row
    whole = L.roi_metrics(scene, pred_node, ref_node)
    assert len(whole) == 1 and whole[0]["source"] == "volume"
    _assert_row_matches(whole[0], evaluate_volumes(pred, ref))
    # a prediction on another grid is resampled onto the reference, like the CLI
    other = Volume(pred.array, pred.spacing, tuple(np.add(pred.origin, (0.4, 0.0, 0.0))), pred.direction)
    other_node = L.add_volume_node(scene, other, "sCT moved")
    moved_rows = L.roi_metrics(scene, other_node, ref_node, segmentation_node=seg)
    assert moved_rows[0]["resampled"] is True and "note" in moved_rows[0]
    with pytest.warns(UserWarning):
        _assert_row_matches(moved_rows[0], evaluate_volumes(other, ref, mask=labels == 1))


def test_logic_roi_metrics_from_rotated_markups_roi(scene, mr_volume, tmp_path):
    from dicyc.metrics import compute_metrics

    pred, ref = _ct_pair(mr_volume, seed=4)
    pred_node, ref_node = L.add_volume_node(scene, pred, "sCT"), L.add_volume_node(scene, ref, "CT")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "aorta box")
    centre = _ras_of(ref_node, (13, 15, 3))
    roi.SetSize(14.0, 9.0, 8.0)
    # pose the box with a parent transform: rotated 30 degrees about S, centred on a voxel
    angle = math.radians(30)
    m = np.eye(4)
    m[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    m[:3, 3] = centre
    roi.SetCenter(0.0, 0.0, 0.0)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "box pose")
    transform.SetMatrixTransformToParent(numpy_to_matrix(m))
    roi.SetAndObserveTransformNodeID(transform.GetID())
    object_to_world = matrix_to_numpy(roi.GetObjectToWorldMatrix())
    assert np.allclose(object_to_world[:3, :3], m[:3, :3]) and np.allclose(object_to_world[:3, 3], centre)

    mask = L.roi_box_mask(ref_node, roi)
    # brute force: every voxel centre in RAS, into the box's frame
    nz, ny, nx = ref.shape
    kk, jj, ii = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    local = (np.linalg.inv(object_to_world) @ L.ijk_to_ras_of(ref_node) @ pts)[:3]
    brute = np.all(np.abs(local) <= np.array([7.0, 4.5, 4.0])[:, None], axis=0).reshape(ref.shape)
    assert brute.sum() > 20 and np.array_equal(mask, brute)

    rows = L.roi_metrics(scene, pred_node, ref_node, roi_node=roi)
    assert len(rows) == 1 and rows[0]["segment"] == "aorta box" and rows[0]["source"] == "roi"
    _assert_row_matches(rows[0], compute_metrics(pred.array, ref.array, mask=brute))
    write_volume(pred, tmp_path / "pred.nrrd")
    write_volume(ref, tmp_path / "ref.nrrd")
    write_volume(ref.with_array(brute.astype(np.uint8)), tmp_path / "box.nrrd")
    _assert_row_matches(rows[0], _cli_evaluate(tmp_path / "pred.nrrd", tmp_path / "ref.nrrd", tmp_path / "box.nrrd"))

    # a box outside the volume: a row that says so, not an exception
    roi.SetCenter(1000.0, 1000.0, 1000.0)
    far = L.roi_metrics(scene, pred_node, ref_node, roi_node=roi)[0]
    assert far["n_voxels"] == 0 and "no voxels" in far["error"] and math.isnan(far["mse"])


def test_logic_metrics_table_node_and_csv_export(scene, mr_volume, tmp_path):
    pred, ref = _ct_pair(mr_volume, seed=5)
    pred_node, ref_node = L.add_volume_node(scene, pred, "sCT"), L.add_volume_node(scene, ref, "CT")
    rows = L.roi_metrics(scene, pred_node, ref_node)
    rows.append({"segment": "identical", "mse": 0.0, "psnr": math.inf, "ssim": 1.0, "mae": 0.0, "n_voxels": 7})
    table = L.metrics_table_node(scene, rows, name="DiCyc metrics")
    assert table.IsA("vtkMRMLTableNode") and table.GetName().startswith("DiCyc metrics")
    header, values = L.table_rows(table)
    assert header == ["Segment", "MSE", "PSNR", "SSIM", "MAE", "Voxels"]
    assert table.GetNumberOfRows() == 2 and table.GetNumberOfColumns() == 6
    assert values[0][0] == "whole volume"
    assert values[0][1:5] == [rows[0]["mse"], rows[0]["psnr"], rows[0]["ssim"], rows[0]["mae"]]
    assert values[0][5] == rows[0]["n_voxels"] == pred.array.size
    assert values[1][2] == math.inf
    assert table.GetColumnUnitLabel("PSNR") == "dB"
    # re-filling the same node replaces its rows
    assert L.metrics_table_node(scene, rows[:1], table_node=table) is table and table.GetNumberOfRows() == 1
    L.metrics_table_node(scene, rows, table_node=table)

    path = L.export_table_csv(table, tmp_path / "metrics.csv")
    with open(path, newline="") as fh:
        read = list(csv.reader(fh))
    assert read[0] == header
    assert read[1][0] == "whole volume" and float(read[1][1]) == rows[0]["mse"]  # full precision
    assert read[2][2] == "inf" and int(read[2][5]) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # atomic: no temp file left
    with pytest.raises(DicycError, match="could not write"):
        L.export_table_csv(table, tmp_path / "metrics.csv" / "nested.csv")


# ===================================================================== model information, module files
def test_logic_model_summary_and_bundled_models(tiny_model, tmp_path, monkeypatch):
    summary = L.model_summary(tiny_model)
    assert summary["method"] == "cyclegan"
    assert (summary["domain_a"], summary["domain_b"]) == ("MR", "CT")
    assert summary["spacing"] == [2.0, 2.0] and summary["slice_size"] == 64
    assert "Method: cyclegan" in summary["text"] and "2 × 2 mm" in summary["text"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 pickle")
    broken = L.model_summary(bad)
    assert "error" in broken and "never unpickles" in broken["error"]

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "demo.safetensors").write_bytes(tiny_model.read_bytes())
    (folder / "notes.txt").write_text("not a model")
    monkeypatch.setenv(L.MODELS_ENV, str(folder))
    import dicyc

    folders = L.model_search_folders()
    assert folders[0] == Path(dicyc.__file__).resolve().parents[1] / "Resources" / "Models"
    assert folder in folders
    found = L.bundled_models()
    assert folder / "demo.safetensors" in found and all(p.suffix == ".safetensors" for p in found)

    # DiCyc's model comes first in its folder (the panel's and the self-test's default), whatever the names
    for name in ("a-cyclegan.safetensors", L.DEFAULT_BUNDLED_MODEL, "z.safetensors"):
        (folder / name).write_bytes(tiny_model.read_bytes())
    ours = [p.name for p in L.bundled_models() if p.parent == folder]
    assert ours == [L.DEFAULT_BUNDLED_MODEL, "a-cyclegan.safetensors", "demo.safetensors", "z.safetensors"]


FORBIDDEN_IMPORTS = {"qt", "ctk", "qSlicerBaseQTCore", "slicer.util", "slicer.ScriptedLoadableModule", "PythonQt"}


def test_logic_lib_imports_only_mrml_vtk_numpy_dicyc():
    """<Module>Lib must run without Qt: no qt/ctk imports and no application singletons."""
    allowed_third_party = {"numpy", "vtk", "slicer", "dicyc", "DiCycCommonLib"}
    stdlib = set(getattr(sys, "stdlib_module_names", ())) or {"csv", "io", "math", "os", "shutil", "tempfile",
                                                              "warnings", "pathlib"}
    lib_files = sorted((MODULE_DIR / "DiCycSynthesisLib").glob("*.py")) + sorted((MODULE_DIR / "DiCycCommonLib").glob("*.py"))
    assert len(lib_files) >= 8
    for path in lib_files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                assert name not in FORBIDDEN_IMPORTS and name.split(".")[0] not in ("qt", "ctk"), f"{path.name}: {name}"
                top = name.split(".")[0]
                assert top in allowed_third_party or top in stdlib, f"{path.name} imports {name}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
                assert node.attr not in ("mrmlScene", "app", "util", "modules"), f"{path.name}: slicer.{node.attr}"


def test_logic_ui_file_and_widget_wiring():
    """The .ui parses, has the "Synthesize CT" button, and every ``self.ui.<name>`` the widget uses exists."""
    ui_path = MODULE_DIR / "Resources" / "UI" / "DiCycSynthesis.ui"
    root = ET.parse(ui_path).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    button = widgets["synthesizeButton"]
    assert button.get("class") == "QPushButton"
    text = [p.find("string").text for p in button.findall("property") if p.get("name") == "text"]
    assert text == ["Synthesize CT"]
    for name in ("inputVolumeSelector", "segmentationSelector", "roiSelector", "referenceVolumeSelector"):
        assert widgets[name].get("class") == "qMRMLNodeComboBox"
    source = (MODULE_DIR / "DiCycSynthesis.py").read_text()
    used = set(__import__("re").findall(r"self\.ui\.(\w+)", source))
    assert used and used <= set(widgets), sorted(used - set(widgets))
    # every .py script and resource of the module is listed in its CMakeLists.txt
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "DiCycSynthesis")
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    for path in MODULE_DIR.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".ui", ".png") and "__pycache__" not in path.parts:
            assert path.relative_to(MODULE_DIR).as_posix() in cmake, path
    icon = MODULE_DIR / "Resources" / "Icons" / "DiCycSynthesis.png"
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(icon))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (128, 128)
