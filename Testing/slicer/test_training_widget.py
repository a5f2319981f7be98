"""DiCyc Training's widget driven through its whole workflow, on a real MRML scene (slicer-core)
with strict Qt/CTK/qMRML stand-ins built from its .ui file (Testing/slicer/standins), and real
``dicyc train`` child processes (tiny networks, a few iterations).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("torch")

import DiCycSynthesisLib as L  # noqa: E402
from dicyc.background import pid_alive  # noqa: E402
from dicyc.volume import Volume  # noqa: E402
from standins.qt import Qt  # noqa: E402

HOLD_LOCK = """
import sys, time
from dicyc.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _phantoms(scene):
    z, y, x = np.mgrid[0:12, 0:40, 0:40].astype(np.float32)
    r = np.sqrt(((x - 20) / 15.0) ** 2 + ((y - 19) / 17.0) ** 2 + ((z - 6) / 14.0) ** 2)
    mr = (np.where(r < 1, 280.0, 0.0) + np.where(r < 0.75, 180.0, 0.0)).astype(np.float32)
    ct = np.full(r.shape, -1000.0, np.float32)
    ct[r < 1] = 40.0
    ct[(r >= 0.82) & (r < 1)] = 1100.0
    geometry = dict(spacing=(2.0, 2.0, 2.0), origin=(-40.0, -40.0, -12.0))
    return (L.add_volume_node(scene, Volume(mr, **geometry), "MR"),
            L.add_volume_node(scene, Volume(ct, **geometry), "CT"))


def _tiny_run(ui, out, iterations):
    ui.ngfSpinBox.value = 4
    ui.nBlocksSpinBox.value = 1
    ui.sliceSizeSpinBox.value = 32
    ui.spacingSpinBox.value = 8.0
    ui.iterationsSpinBox.value = iterations
    ui.checkpointEverySpinBox.value = 2
    ui.deviceComboBox.choose("cpu")
    ui.methodComboBox.choose("cyclegan")
    ui.outputDirectoryPathLineEdit.type_path(str(out))


@pytest.fixture
def child_env(monkeypatch, tmp_path):
    """Training children get a private cache and one thread each (the machine is shared)."""
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_training_widget_whole_workflow(slicer_app, tmp_path, child_env):
    scene = slicer_app.scene
    w = slicer_app.select("DiCycTraining")
    ui = w.ui
    mr, ct = _phantoms(scene)
    assert ui.methodComboBox.currentText == "dicyc" and ui.methodDescriptionLabel.text
    assert not ui.stopButton.enabled and not ui.resumeButton.enabled and not ui.useForSynthesisButton.enabled

    # data: folders through the folder picker (several, no duplicates), or scene volumes
    for folder in (tmp_path / "a1", tmp_path / "a2", tmp_path / "a1"):
        folder.mkdir(exist_ok=True)
        slicer_app.expect_file_dialog("directory", folder)
        ui.domainAFolderButton.click()
    assert ui.domainAPathLineEdit.currentPath == f"{tmp_path / 'a1'};{tmp_path / 'a2'}"
    slicer_app.expect_file_dialog("directory", "")  # cancelled: nothing changes
    ui.domainAFolderButton.click()
    ui.domainAPathLineEdit.type_path("")
    assert ui.domainANodesComboBox.nodeCount() == 2
    ui.domainANodesComboBox.setCheckState(mr, Qt.Checked)
    ui.domainBNodesComboBox.setCheckState(ct, Qt.Checked)
    out = tmp_path / "run"
    _tiny_run(ui, out, iterations=4)
    options_file = tmp_path / "options.json"  # further options, e.g. a recipe, from a JSON file
    options_file.write_text('{"lambda_identity": 0.25}')
    ui.optionsFilePathLineEdit.type_path(str(options_file))

    # Start: progress, log, loss chart; the form is locked while it runs
    ui.startButton.click()
    assert w.logic.running and ui.stopButton.enabled and not ui.startButton.enabled
    assert not ui.dataCollapsibleButton.enabled and not ui.methodCollapsibleButton.enabled
    assert w.timer.isActive()
    slicer_app.run_until(lambda: not w.timer.isActive(), timeout=300)
    state = w.logic.state
    assert state.done, (state.error, state.log[-10:])
    assert ui.progressBar.maximum == 4 and ui.progressBar.value == 4
    assert ui.statusLabel.text.startswith("Done") and "Model: cyclegan" in ui.statusLabel.text
    assert "prepared (12 body slices)" in ui.logTextEdit.plainText and str(out) in ui.logTextEdit.plainText
    assert (out / "inputs").is_dir() and sorted(p.name[:3] for p in (out / "inputs").iterdir()) == ["A00", "B00"]
    assert json.loads((out / "config.json").read_text())["config"]["lambda_identity"] == 0.25
    chart = slicer.modules.plots.logic().shown[-1]
    assert chart is w.shownChart and scene.IsNodePresent(chart) and chart.GetNumberOfPlotSeriesNodes() > 0
    assert ui.startButton.enabled and ui.resumeButton.enabled and ui.useForSynthesisButton.enabled
    assert ui.dataCollapsibleButton.enabled

    # Start on a folder that holds a run offers Resume instead (declined here)
    slicer_app.expect_dialog("question", answer=False, match="already holds a training run")
    ui.startButton.click()
    assert not w.logic.running

    # another trainer holds the folder: Start and Resume are refused, in one sentence
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
    try:
        assert holder.stdout.readline().strip() == "held"
        ui.outputDirectoryPathLineEdit.type_path(str(tmp_path))
        ui.outputDirectoryPathLineEdit.type_path(str(out))
        assert not ui.resumeButton.enabled and not ui.startButton.enabled
        assert "is in use by another training (pid" in ui.statusLabel.text
        slicer_app.expect_dialog("error", match="is in use by another training")
        w.onResume()  # e.g. from a script: refused as well
        assert not w.logic.running
    finally:
        holder.kill()
        holder.wait(10)
    ui.outputDirectoryPathLineEdit.type_path(str(tmp_path))
    ui.outputDirectoryPathLineEdit.type_path(str(out))
    assert ui.resumeButton.enabled

    # the loss plot after a scene close: a new chart, shown
    slicer_app.close_scene()
    assert w.shownChart is None
    ui.showLossPlotButton.click()
    new_chart = slicer.modules.plots.logic().shown[-1]
    assert new_chart is not chart and scene.IsNodePresent(new_chart)

    # "Use for synthesis" opens DiCyc Synthesis with the run's model
    ui.useForSynthesisButton.click()
    assert slicer_app.current == "DiCycSynthesis"
    synthesis = slicer_app.widgets["DiCycSynthesis"]
    assert synthesis.currentModelPath() == w.logic.model_path(str(out))
    assert "cyclegan" in synthesis.ui.modelCardLabel.text
    assert slicer.app.settings().value("DiCyc/ModelPath") is None  # handed over once


def test_training_widget_close_guard_and_scene_close(slicer_app, tmp_path, child_env):
    """A long run: the chart follows a scene close, and closing Slicer asks first — No keeps Slicer
    and the training, Yes stops the training (its whole process tree) and Slicer closes."""
    scene = slicer_app.scene
    w = slicer_app.select("DiCycTraining")
    ui = w.ui
    mr, ct = _phantoms(scene)
    ui.domainANodesComboBox.setCheckState(mr, Qt.Checked)
    ui.domainBNodesComboBox.setCheckState(ct, Qt.Checked)
    _tiny_run(ui, tmp_path / "run", iterations=100000)
    ui.startButton.click()
    slicer_app.run_until(lambda: w.shownChart is not None and (w.logic.state.checkpoint_iteration or 0) >= 2,
                         timeout=300)
    first = w.shownChart
    slicer_app.close_scene()  # the chart goes with the scene; the running training gets a new one at once
    assert w.shownChart is not None and w.shownChart is not first and not scene.IsNodePresent(first)
    assert scene.IsNodePresent(w.shownChart) and slicer.modules.plots.logic().shown[-1] is w.shownChart
    table = scene.GetNodeByID(w.shownChart.GetNthPlotSeriesNode(0).GetTableNodeID())
    assert table.GetNumberOfRows() == len(w.logic.state.history)

    pid = w.logic.pid
    slicer_app.expect_dialog("question", answer=False,
                             match=r"A DiCyc training is running \(iteration \d+ of 100000\).*Resume continues")
    assert slicer_app.close_application() is False
    assert w.logic.running and pid_alive(pid) and w.timer.isActive()

    ui.stopButton.click()  # Stop ends the whole process tree; Resume continues from the checkpoint
    assert not w.logic.running and not pid_alive(pid) and not w.timer.isActive()
    assert ui.statusLabel.text.startswith("Stopped") and ui.resumeButton.enabled and ui.startButton.enabled
    ui.resumeButton.click()
    assert w.logic.running and w.timer.isActive() and not ui.resumeButton.enabled
    pid = w.logic.pid

    slicer_app.expect_dialog("question", answer=True, match="A DiCyc training is running")
    assert slicer_app.close_application() is True
    assert not pid_alive(pid) and not w.timer.isActive()  # stopped before Slicer closed
    assert slicer_app.widgets == {}  # and every module was unloaded (cleanup)
