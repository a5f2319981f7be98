"""DiCyc Synthesis's widget driven through its whole workflow, on a real MRML scene (slicer-core)
with strict Qt/CTK/qMRML stand-ins built from its .ui file (Testing/slicer/standins).

What this catches and what it cannot: see README, "Testing the Slicer modules".
"""

import csv
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

import DiCycSynthesisLib as L  # noqa: E402
from standins import pytorchutils  # noqa: E402


def _ct_like(mr_volume, seed):
    volume = mr_volume(seed=seed)
    return volume.with_array((volume.array * 4.0 - 900.0).astype(np.float32))


def _synthesis_done(slicer_app, widget):
    slicer_app.run_until(lambda: not widget.logic.synthesis.running and not widget.timer.isActive(), timeout=180)


def _views(slicer_app):
    layout = slicer_app.scene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement()
    orientations = {name: logic.GetSliceNode().GetOrientation() for name, logic in slicer_app.slice_logics.items()}
    linked = [n.GetLinkedControl() for n in L.slice_composite_nodes(slicer_app.scene).values()]
    return layout, orientations, any(linked)


def test_synthesis_widget_whole_workflow(slicer_app, mr_volume, tiny_model, tmp_path):
    scene = slicer_app.scene
    w = slicer_app.select("DiCycSynthesis")
    ui = w.ui
    assert not ui.synthesizeButton.enabled  # no input yet
    mr = L.add_volume_node(scene, mr_volume(seed=1), "MR")
    ct = L.add_volume_node(scene, _ct_like(mr_volume, 2), "CT")
    # the input takes the first volume (as Slicer's templates do); the synthetic selector does not:
    # it is filled only by a result or by the user
    assert ui.inputVolumeSelector.currentNode() is mr
    assert ui.syntheticVolumeSelector.currentNode() is None
    assert ui.outputVolumeSelector.currentNode() is None  # "Create new volume"

    # ---- model: the bundled one is listed; a model file is added to the user's models folder
    assert ui.modelComboBox.itemText(0) == L.DEFAULT_BUNDLED_MODEL and "Method: dicyc" in ui.modelCardLabel.text
    ui.modelComboBox.choose("Model file…")
    assert ui.modelPathLineEdit.visible and not ui.addModelButton.enabled
    ui.modelPathLineEdit.type_path(str(tiny_model))
    assert "ngf 4" in ui.modelCardLabel.text and ui.addModelButton.enabled and not ui.removeModelButton.enabled
    ui.addModelButton.click()
    folder = w.modelsFolder()
    assert (folder / tiny_model.name).is_file()
    assert ui.modelComboBox.currentText == f"{tiny_model.name} (my models)" and not ui.modelPathLineEdit.visible
    assert ui.removeModelButton.enabled and not ui.addModelButton.enabled
    assert any(str(folder) in m for m in slicer_app.status_messages)
    ui.openModelsFolderButton.click()
    assert slicer_app.hooks.opened_urls[-1].toLocalFile() == str(folder)
    ui.deviceComboBox.choose("cpu")
    ui.precisionComboBox.choose("fp32")
    assert w._parameterNode.GetParameter("Device") == "cpu"
    assert w._parameterNode.GetParameter("ModelPath") == str(folder / tiny_model.name)

    # ---- synthesis in the background: progress, log, result; the output goes back to "Create new"
    assert ui.synthesizeButton.enabled and not ui.cancelButton.enabled
    ui.synthesizeButton.click()
    assert w.logic.synthesis.running and ui.cancelButton.enabled and not ui.synthesizeButton.enabled
    _synthesis_done(slicer_app, w)
    first = ui.syntheticVolumeSelector.currentNode()
    assert first is not None and first is not mr and ui.statusLabel.text == "Done."
    assert ui.progressBar.value == 100 and "synthesised 6 slices on cpu" in ui.logTextEdit.plainText
    assert ui.outputVolumeSelector.currentNode() is None
    assert np.array_equal(L.ijk_to_ras_of(first), L.ijk_to_ras_of(mr))
    assert first.GetDisplayNode().GetWindow() == 400.0  # the CT window
    red = L.slice_composite_nodes(scene)["Red"]
    assert red.GetBackgroundVolumeID() == first.GetID() and red.GetForegroundVolumeID() == mr.GetID()

    # ---- again, inside Slicer this time: a second node, the first one is left alone
    before = L.volume_from_node(first).array.copy()
    ui.backgroundCheckBox.checked = False
    ui.synthesizeButton.click()
    second = ui.syntheticVolumeSelector.currentNode()
    assert second is not first and np.array_equal(L.volume_from_node(first).array, before)
    assert ui.statusLabel.text.startswith("Done: 6 slices on cpu (fp32)")
    assert ui.outputVolumeSelector.currentNode() is None
    # the user may still choose to overwrite: then that node gets the result
    ui.outputVolumeSelector.choose(first)
    ui.synthesizeButton.click()
    assert ui.syntheticVolumeSelector.currentNode() is first and ui.outputVolumeSelector.currentNode() is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4

    # ---- Cancel ends the background process tree
    ui.backgroundCheckBox.checked = True
    ui.synthesizeButton.click()
    pid = w.logic.synthesis.process.pid
    ui.cancelButton.click()
    from dicyc.background import pid_alive

    assert not w.logic.synthesis.running and not pid_alive(pid) and ui.statusLabel.text == "Cancelled."
    assert not w.timer.isActive() and ui.synthesizeButton.enabled

    # ---- Compare: the views change, and are given back
    ui.syntheticVolumeSelector.choose(second)
    ui.referenceVolumeSelector.choose(ct)
    assert ui.checkerboardButton.enabled and not ui.restoreViewsButton.enabled
    original = _views(slicer_app)
    assert original == (slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView,
                        {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}, False)
    ui.tilesSpinBox.value = 4
    ui.checkerboardButton.click()
    board = scene.GetNodeByID(red.GetBackgroundVolumeID())
    assert board.GetAttribute("DiCyc.Checkerboard") == "4" and ui.restoreViewsButton.enabled
    ui.sideBySideRadioButton.click()  # layer reveal → side by side
    assert not ui.revealRadioButton.checked
    layout, orientations, linked = _views(slicer_app)
    assert layout == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView and orientations["Yellow"] == "Axial" and linked
    ui.compareCollapsibleButton.collapsed = True  # leaving the comparison gives the views back
    assert _views(slicer_app) == original and not ui.restoreViewsButton.enabled
    ui.compareCollapsibleButton.collapsed = False
    ui.opacitySliderWidget.value = 0.7
    ui.errorImageButton.click()
    error = scene.GetNodeByID(red.GetForegroundVolumeID())
    assert error.GetAttribute("DiCyc.ErrorImage") == "1" and red.GetForegroundOpacity() == pytest.approx(0.7)
    ui.overlayButton.click()  # side by side again
    assert _views(slicer_app) != original
    ui.restoreViewsButton.click()
    assert _views(slicer_app) == original
    ui.overlayButton.click()
    slicer_app.select("DiCycTraining")  # leaving the module gives them back too
    assert _views(slicer_app) == original
    w = slicer_app.select("DiCycSynthesis")
    ui = w.ui

    # ---- ROI metrics: a segment and a Markups ROI box, into a table, exported as CSV
    ref = L.volume_from_node(ct)
    labels = np.zeros(ref.shape, np.uint8)
    labels[2:5, 12:20, 10:18] = 1
    labelmap = L.add_volume_node(scene, ref.with_array(labels), "aorta", node_class="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("aorta")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(*(L.ijk_to_ras_of(ct) @ [ref.shape[2] / 2, ref.shape[1] / 2, ref.shape[0] / 2, 1.0])[:3])
    roi.SetSize(30.0, 30.0, 30.0)
    ui.segmentationSelector.choose(segmentation)
    ui.roiSelector.choose(roi)
    assert not ui.exportCsvButton.enabled
    ui.computeMetricsButton.click()
    table = ui.metricsTableView.mrmlTableNode()
    assert table is not None and table.GetNumberOfRows() == 2 and ui.exportCsvButton.enabled
    path = tmp_path / "metrics.csv"
    slicer_app.expect_file_dialog("save", path)
    ui.exportCsvButton.click()
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:5] == ["Segment", "MSE", "PSNR", "SSIM", "MAE"] and [r[0] for r in rows[1:]] == ["aorta", "box"]
    slicer_app.expect_file_dialog("save", "")  # the user cancels the dialog: nothing happens
    ui.exportCsvButton.click()

    # ---- the model is removed from the folder again (after a confirmation)
    ui.modelComboBox.choose(f"{tiny_model.name} (my models)")
    slicer_app.expect_dialog("question", answer=False, match="Delete tiny-mr2ct.safetensors")
    ui.removeModelButton.click()
    assert (folder / tiny_model.name).is_file()
    slicer_app.expect_dialog("question", answer=True, match="Delete tiny-mr2ct.safetensors")
    ui.removeModelButton.click()
    assert not (folder / tiny_model.name).exists()
    assert ui.modelComboBox.findText(f"{tiny_model.name} (my models)") < 0

    # ---- a scene close resets the panel; errors from the engine come as one sentence
    slicer_app.close_scene()
    assert ui.inputVolumeSelector.currentNode() is None and not ui.synthesizeButton.enabled
    flat = L.add_volume_node(scene, mr_volume().with_array(np.zeros((6, 40, 34), np.float32)), "flat")
    assert ui.inputVolumeSelector.currentNode() is flat
    ui.modelComboBox.choose("Model file…")
    ui.modelPathLineEdit.type_path(str(tiny_model))
    slicer_app.expect_dialog("error", match="Could not start the synthesis.*is constant")
    ui.synthesizeButton.click()
    assert [type(e).__name__ for _, e in slicer_app.take_slot_errors()] == ["DicycError"]  # re-raised, as Slicer does


@pytest.fixture
def missing(monkeypatch):
    """Pretend packages are not installed: ``missing({"scipy", ...})``."""
    import DiCycDependencies

    real = DiCycDependencies.installed

    def pretend(names):
        monkeypatch.setattr(DiCycDependencies, "installed", lambda name: name not in names and real(name))

    return pretend


def test_dependencies_are_asked_for_once_and_only_where_a_path_imports_them(slicer_app, mr_volume, tiny_model,
                                                                             missing, monkeypatch):
    import DiCycDependencies

    scene = slicer_app.scene
    w = slicer_app.select("DiCycSynthesis")
    ui = w.ui
    mr = L.add_volume_node(scene, mr_volume(seed=1), "MR")
    ct = L.add_volume_node(scene, _ct_like(mr_volume, 2), "CT")
    ui.syntheticVolumeSelector.choose(mr)
    ui.referenceVolumeSelector.choose(ct)
    missing({"torch", "safetensors", "scipy", "nibabel", "matplotlib"})

    # Compare needs nothing beyond Slicer: no question at all, even offline
    ui.checkerboardButton.click()
    ui.errorImageButton.click()
    assert slicer_app.dialogs == []

    # ROI metrics: scipy only, in one question; declining leaves everything as it was
    slicer_app.expect_dialog("question", answer=False, match=r"scipy>=1\.7")
    ui.computeMetricsButton.click()
    asked = slicer_app.dialogs[-1].text
    assert "nibabel" not in asked and "torch" not in asked and "matplotlib" not in asked
    assert ui.metricsTableView.mrmlTableNode() is None and slicer_app.pip_installs == []

    # Synthesis: torch (through PyTorchUtils, >= 2.1), safetensors and scipy, listed in ONE question
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorchutils.as_module())
    ui.modelComboBox.choose("Model file…")
    ui.modelPathLineEdit.type_path(str(tiny_model))
    slicer_app.expect_dialog("question", answer=True, match=r"torch>=2\.1.*safetensors>=0\.4.*scipy>=1\.7")
    slicer_app.expect_dialog("question", answer=False, match="Restart now")  # torch and scipy were loaded already
    ui.synthesizeButton.click()
    asked = slicer_app.dialogs[-2].text
    assert "nibabel" not in asked and "matplotlib" not in asked and "PyTorch extension" in asked
    assert pytorchutils.INSTALLS == [{"askConfirmation": False, "forceComputationBackend": None,
                                      "torchVersionRequirement": ">=2.1"}]
    assert slicer_app.pip_installs == [["safetensors>=0.4", "scipy>=1.7"]]
    assert not w.logic.synthesis.running and slicer_app.app.restarts == 0
    slicer_app.expect_dialog("question", answer=True, match=r"torch>=2\.1")
    slicer_app.expect_dialog("question", answer=True, match="Restart now")
    ui.synthesizeButton.click()
    assert slicer_app.app.restarts == 1

    # a torch that is too old counts as missing, with what is installed
    missing(set())
    monkeypatch.setattr(DiCycDependencies, "installedVersion", lambda name: "2.0.1+cu118" if name == "torch" else None)
    assert DiCycDependencies.missingRequirements("synthesis") == [("torch", "torch>=2.1", "installed: 2.0.1+cu118")]
    assert DiCycDependencies.missingRequirements("comparison") == []
    # without the PyTorch extension: one error saying where torch comes from, nothing installed
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    slicer_app.expect_dialog("error", match="comes with the 'PyTorch' extension")
    ui.synthesizeButton.click()
    assert len(pytorchutils.INSTALLS) == 2 and len(slicer_app.pip_installs) == 2
    # a failed installation: its error is shown, nothing runs
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorchutils.as_module())
    monkeypatch.setattr(pytorchutils, "RESULT", None)
    slicer_app.expect_dialog("question", answer=True, match="torch>=2.1")
    slicer_app.expect_dialog("error", match="Failed to install Python packages.*PyTorch was not installed")
    ui.synthesizeButton.click()
    assert not w.logic.synthesis.running


def test_testing_mode_installs_nothing(slicer_app, missing):
    import DiCycDependencies

    slicer_app.app.commandOptions().testingEnabled = True
    missing({"scipy"})
    assert DiCycDependencies.ensureDependencies("metrics") is False
    assert DiCycDependencies.ensureDependencies("comparison") is True
    assert slicer_app.dialogs == [] and slicer_app.pip_installs == []


def test_reload_reads_the_lib_packages_again(slicer_app):
    """Developer mode's Reload button: the module file and its Lib packages come from disk anew, the
    old widget is cleaned up and a new one takes its place."""
    slicer_app.hooks.settings["Developer/DeveloperMode"] = "true"
    for name, lib in (("DiCycSynthesis", "DiCycSynthesisLib.compare"), ("DiCycTraining", "DiCycTrainingLib.logic")):
        old = slicer_app.select(name)
        old_lib, old_shared = sys.modules[lib], sys.modules["DiCycCommonLib.nodes"]
        old.timer.start()
        old.reloadButton.click()
        new = getattr(slicer.modules, name + "Widget")
        assert new is not old and slicer_app.widgets[name] is new
        assert not old.timer.isActive()  # the old widget's cleanup() ran
        assert new.logic is not old.logic and new.ui.progressBar is not old.ui.progressBar  # a new, working panel
        __import__(lib)
        __import__("DiCycCommonLib.nodes")
        assert sys.modules[lib] is not old_lib and sys.modules["DiCycCommonLib.nodes"] is not old_shared
        assert sys.modules[name].__dict__[name + "Widget"] is type(new)


def test_mps_is_offered_where_torch_has_it(slicer_app, monkeypatch):
    import torch

    import DiCycDependencies

    w = slicer_app.select("DiCycSynthesis")
    assert w.ui.deviceComboBox.findText("mps") < 0  # this machine: no Apple GPU
    real = DiCycDependencies.mpsAvailable
    monkeypatch.setattr(sys, "platform", "darwin")
    assert real() is False  # torch here has no usable MPS
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert real() is True
    monkeypatch.setattr(sys, "platform", "linux")
    assert real() is False  # off macOS torch is not even asked
    monkeypatch.setattr(DiCycDependencies, "mpsAvailable", lambda: True)
    for _ in range(2):
        DiCycDependencies.addAvailableDevices(w.ui.deviceComboBox)
    assert [w.ui.deviceComboBox.itemText(i) for i in range(w.ui.deviceComboBox.count)] == ["auto", "cpu", "cuda", "mps"]
    w.ui.deviceComboBox.choose("mps")
    assert w._parameterNode.GetParameter("Device") == "mps"


def _box_segmentation(scene, reference, boxes):
    """A segmentation of named box segments {name: (k0, k1, j0, j1, i0, i1)} drawn on the reference's grid,
    imported as Segment Editor's users do (generated segment IDs); returns (node, {name: mask})."""
    ref = L.volume_from_node(reference)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    masks = {}
    for name, (k0, k1, j0, j1, i0, i1) in boxes.items():
        labels = np.zeros(ref.shape, np.uint8)
        labels[k0:k1, j0:j1, i0:i1] = 1
        labelmap = L.add_volume_node(scene, ref.with_array(labels), name, node_class="vtkMRMLLabelMapVolumeNode")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segmentation.GetSegmentation().GetNthSegment(len(masks)).SetName(name)
        scene.RemoveNode(labelmap)
        masks[name] = labels != 0
    return segmentation, masks


def _centre_of(volume, mask):
    k, j, i = (int(np.floor(c.mean() + 0.5)) for c in np.nonzero(mask))
    return (volume.ijk_to_ras() @ [i, j, k, 1.0])[:3]


def _translations(slicer_app):
    out = {}
    for name, logic in slicer_app.slice_logics.items():
        matrix = logic.GetSliceNode().GetSliceToRAS()
        out[name] = np.array([matrix.GetElement(r, 3) for r in range(3)])
    return out


def test_compare_centres_the_views_on_a_segment_and_one_view_on_a_second(slicer_app, mr_volume):
    scene = slicer_app.scene
    w = slicer_app.select("DiCycSynthesis")
    ui = w.ui
    assert not ui.centerSegmentComboBox.enabled and not ui.alsoSegmentComboBox.enabled
    assert not ui.centerViewsButton.enabled
    mr = L.add_volume_node(scene, mr_volume(seed=1), "MR")
    ct = L.add_volume_node(scene, _ct_like(mr_volume, 2), "CT")
    segmentation, masks = _box_segmentation(scene, mr, {"aorta": (1, 5, 10, 18, 12, 18),
                                                        "spine": (0, 6, 24, 32, 14, 20)})
    ui.syntheticVolumeSelector.choose(mr)
    ui.referenceVolumeSelector.choose(ct)
    ui.compareSegmentationSelector.choose(segmentation)
    items = [ui.centerSegmentComboBox.itemText(i) for i in range(ui.centerSegmentComboBox.count)]
    assert items == ["(none)", "aorta", "spine"] and ui.centerSegmentComboBox.currentText == "(none)"
    assert ui.centerSegmentComboBox.enabled and not ui.centerViewsButton.enabled  # nothing to centre on yet
    ui.centerSegmentComboBox.choose("aorta")
    ui.alsoSegmentComboBox.choose("spine")
    ui.zoomSpinBox.value = 100
    p = w._parameterNode
    ids = {name: sid for name, sid in ((n, s) for s, n in L.segment_ids(segmentation))}
    assert (p.GetParameter("CenterSegment"), p.GetParameter("AlsoSegment"), p.GetParameter("ZoomMm")) == (
        ids["aorta"], ids["spine"], "100")
    assert p.GetNodeReferenceID("CompareSegmentation") == segmentation.GetID() and ui.centerViewsButton.enabled

    # the checkerboard comes up centred: Red and Green through the aorta, Yellow through the spine, 100 mm wide
    volume = L.volume_from_node(mr)
    aorta, spine = _centre_of(volume, masks["aorta"]), _centre_of(volume, masks["spine"])
    ui.checkerboardButton.click()
    centres = _translations(slicer_app)
    assert np.allclose(centres["Red"], aorta) and np.allclose(centres["Green"], aorta)
    assert np.allclose(centres["Yellow"], spine)
    assert min(slicer_app.slice_logics["Red"].GetSliceNode().GetFieldOfView()[:2]) == pytest.approx(100.0)
    assert slicer_app.status_messages[-1] == (
        "Views centred: Red, Green through the centre of aorta; Yellow through the centre of spine.")
    # side by side: both halves on the aorta, the spine in Green
    ui.sideBySideRadioButton.click()
    centres = _translations(slicer_app)
    assert np.allclose(centres["Red"], aorta) and np.allclose(centres["Yellow"], aorta)
    assert np.allclose(centres["Green"], spine)
    ui.revealRadioButton.click()
    # the user scrolls away; Centre views brings the aorta back
    slicer_app.slice_logics["Red"].SetSliceOffset(float(aorta[2]) + 9.0)
    ui.centerViewsButton.click()
    assert np.allclose(_translations(slicer_app)["Red"], aorta)

    # Segment Editor renames one segment and deletes the other: the lists follow
    segmentation.GetSegmentation().GetSegment(ids["aorta"]).SetName("abdominal aorta")
    assert ui.centerSegmentComboBox.currentText == "abdominal aorta"
    segmentation.GetSegmentation().RemoveSegment(ids["spine"])
    assert ui.alsoSegmentComboBox.currentText == "(none)" and p.GetParameter("AlsoSegment") == ""
    assert p.GetParameter("CenterSegment") == ids["aorta"]
    ui.overlayButton.click()
    assert all(np.allclose(c, aorta) for c in _translations(slicer_app).values())  # one structure: every view
    ui.restoreViewsButton.click()

    # a segment the compared volume does not contain: one sentence, nothing moved
    far = L.add_volume_node(scene, mr_volume(shape=(4, 10, 10), origin=(400.0, 400.0, 400.0)), "far")
    ui.syntheticVolumeSelector.choose(far)
    before = _translations(slicer_app)
    slicer_app.expect_dialog("error",
                             match="Could not centre the views.*segment abdominal aorta has no voxels inside far")
    ui.centerViewsButton.click()
    assert [type(e).__name__ for _, e in slicer_app.take_slot_errors()] == ["DicycError"]
    assert all(np.allclose(before[n], c) for n, c in _translations(slicer_app).items())

    # no segmentation, no centring; a scene close empties the lists
    ui.compareSegmentationSelector.choose(None)
    assert not ui.centerSegmentComboBox.enabled and ui.centerSegmentComboBox.count == 1
    assert not ui.centerViewsButton.enabled and p.GetParameter("CenterSegment") == ""
    ui.compareSegmentationSelector.choose(segmentation)
    slicer_app.close_scene()
    assert ui.compareSegmentationSelector.currentNode() is None and not ui.centerSegmentComboBox.enabled
