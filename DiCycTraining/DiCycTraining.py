"""DiCyc Training: train an unpaired synthesis model (e.g. MR → CT) without leaving 3D Slicer.

The panel only wires its ``.ui`` to :class:`DiCycTrainingLib.logic.TrainingLogic`, which runs
``dicyc train`` in a separate process (``PythonSlicer -m dicyc train …``) and follows its
JSON-lines events. A ``QTimer`` polls the logic, so Slicer stays responsive for the whole run:
progress bar and ETA, a live loss chart in the plot view, the latest preview image, Stop (the
whole process tree ends) and Resume (from the last checkpoint). When a model exists, "Use for
synthesis" hands it to the DiCyc Synthesis module.
"""

import logging
import os
import shutil
import tempfile
import time

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import DiCycDependencies
from DiCycDependencies import MODEL_PATH_SETTING, pythonSlicerExecutable

POLL_INTERVAL_MS = 500


#
# DiCycTraining
#
class DiCycTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DiCyc Training"
        self.parent.categories = ["DiCyc"]
        self.parent.dependencies = []
        self.parent.contributors = ["DiCyc contributors"]
        self.parent.helpText = """
Train a model that synthesises one imaging modality from another (for example CT from MR) from
<b>unpaired</b> data: the two domains may come from different patients. Pick the volumes of
domain A and domain B (files, folders, list files, or volumes loaded in the scene), a method
(<i>dicyc</i> is deformation-invariant: it copes with domains that are not aligned), the main
hyper-parameters and an output folder, then <b>Start training</b>. Training runs in a separate
process: the progress bar, ETA, loss chart and preview update while you keep working.
<b>Stop</b> ends it; <b>Resume</b> continues from the last checkpoint. A run folder that another
training is using (another Slicer, a script) is refused, and closing Slicer during a training asks
first; the training never outlives Slicer. When a model exists, <b>Use for synthesis</b> opens
DiCyc Synthesis with it.
"""
        self.parent.acknowledgementText = """
Methods after Wang et al., "DiCyc: GAN-based deformation invariant cross-domain information
fusion for medical image synthesis" (Information Fusion 2021), and CycleGAN (Zhu et al. 2017).
PyTorch comes from the PyTorch extension (SlicerPyTorch).
"""


#
# DiCycTrainingWidget
#
class _CloseGuard(qt.QObject):
    """Event filter on Slicer's main window: closing Slicer while a training runs asks first."""

    def __init__(self, widget):
        qt.QObject.__init__(self)
        self.widget = widget

    def eventFilter(self, watched, event):
        if event.type() == qt.QEvent.Close and not self.widget.confirmClose():
            event.ignore()
            return True  # Slicer stays open
        return False


class DiCycTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    #: packages that Reload reads from disk again (with DiCycDependencies.SHARED_PACKAGES)
    LIB_PACKAGES = ("DiCycTrainingLib",)

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.timer = None
        self.shownPreview = None
        self.shownChart = None
        self.closeGuard = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from DiCycTrainingLib.logic import TrainingLogic

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DiCycTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TrainingLogic(python=pythonSlicerExecutable())
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # methods, with their one-line descriptions
        for name, description in TrainingLogic.methods():
            self.ui.methodComboBox.addItem(name, description)
            self.ui.methodComboBox.setItemData(self.ui.methodComboBox.count - 1, description, qt.Qt.ToolTipRole)
        index = self.ui.methodComboBox.findText("dicyc")
        if index >= 0:
            self.ui.methodComboBox.currentIndex = index
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.onMethodChanged()
        self.setDefaults(TrainingLogic.default_options())
        DiCycDependencies.addAvailableDevices(self.ui.deviceComboBox)

        self.ui.domainAFolderButton.connect("clicked(bool)", lambda: self.onAddDomainFolder("A"))
        self.ui.domainBFolderButton.connect("clicked(bool)", lambda: self.onAddDomainFolder("B"))
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.useForSynthesisButton.connect("clicked(bool)", self.onUseForSynthesis)
        self.ui.showLossPlotButton.connect("clicked(bool)", self.onShowLossPlot)
        self.ui.outputDirectoryPathLineEdit.connect("currentPathChanged(QString)", self.updateButtons)

        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:
            self.closeGuard = _CloseGuard(self)
            mainWindow.installEventFilter(self.closeGuard)
        self.updateButtons()

    def cleanup(self):
        """Slicer closes (or the module reloads): end a running training; it can be resumed later."""
        if self.closeGuard is not None:
            mainWindow = slicer.util.mainWindow()
            if mainWindow is not None:
                mainWindow.removeEventFilter(self.closeGuard)
            self.closeGuard = None
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None and self.logic.running:
            self.logic.stop()
        self.removeObservers()

    def onReload(self):
        """Developer Reload: read the Lib packages from disk again too, not only this file."""
        DiCycDependencies.forgetPackages(self.LIB_PACKAGES + DiCycDependencies.SHARED_PACKAGES)
        ScriptedLoadableModuleWidget.onReload(self)

    def confirmClose(self):
        """Asked when Slicer is about to close: True lets it close (a running training is stopped
        first; Resume continues it later), False keeps Slicer open."""
        if self.logic is None or not self.logic.running:
            return True
        state = self.logic.state
        where = f" (iteration {state.iteration} of {state.total})" if state is not None and state.total else ""
        checkpoint = state.checkpoint_iteration if state is not None else None
        resume = (f"Resume continues it from its last checkpoint (iteration {checkpoint})." if checkpoint
                  else "No checkpoint has been written yet, so it would start over.")
        if not slicer.util.confirmYesNoDisplay(
                f"A DiCyc training is running{where}. Closing Slicer stops it; {resume}\n\nClose Slicer anyway?",
                "DiCyc: training in progress"):
            return False
        self.timer.stop()
        self.logic.stop()
        return True

    def onSceneEndClose(self, caller, event):
        """The loss chart went with the scene: a running training gets a new one, shown at once."""
        self.shownChart = None
        state = self.logic.state if self.logic is not None else None
        if self.logic is not None and self.logic.running and state is not None and state.history:
            self.updateLossPlot(state)

    # ----------------------------------------------------------------- GUI ⇄ options
    def setDefaults(self, defaults):
        self.ui.ngfSpinBox.value = defaults["ngf"]
        self.ui.nBlocksSpinBox.value = defaults["n_blocks"]
        self.ui.sliceSizeSpinBox.value = defaults["slice_size"]
        spacing = defaults["spacing"]
        self.ui.spacingSpinBox.value = spacing[0] if isinstance(spacing, (list, tuple)) else spacing
        self.ui.batchSizeSpinBox.value = defaults["batch_size"]
        self.ui.iterationsSpinBox.value = defaults["iterations"] or 0
        self.ui.checkpointEverySpinBox.value = defaults["checkpoint_every"]

    def options(self):
        """The training options the panel shows, as the logic takes them."""
        return {
            "ngf": self.ui.ngfSpinBox.value,
            "n_blocks": self.ui.nBlocksSpinBox.value,
            "slice_size": self.ui.sliceSizeSpinBox.value,
            "spacing": self.ui.spacingSpinBox.value,
            "batch_size": self.ui.batchSizeSpinBox.value,
            "iterations": self.ui.iterationsSpinBox.value or None,  # 0: epochs with early stop
            "checkpoint_every": self.ui.checkpointEverySpinBox.value,
            "device": self.ui.deviceComboBox.currentText.strip() or "auto",
            "modality_a": self.ui.domainAModalityComboBox.currentText.strip() or "MR",
            "modality_b": self.ui.domainBModalityComboBox.currentText.strip() or "CT",
            # further options from a JSON file (dicyc train --config), e.g. the papers' DiCyc
            "config": str(self.ui.optionsFilePathLineEdit.currentPath).strip() or None,
        }

    @staticmethod
    def splitPaths(text):
        return [p.strip() for p in str(text).split(";") if p.strip()]

    def domainItems(self, pathLineEdit, nodesComboBox):
        """Paths typed or browsed (several separated by ';') plus the checked scene volumes."""
        return self.splitPaths(pathLineEdit.currentPath) + list(nodesComboBox.checkedNodes())

    def onAddDomainFolder(self, domain):
        """Pick a folder of volumes (the path field's own browse button picks files) and add it to the list."""
        lineEdit = getattr(self.ui, f"domain{domain}PathLineEdit")
        paths = self.splitPaths(lineEdit.currentPath)
        start = paths[-1] if paths else ""
        folder = qt.QFileDialog.getExistingDirectory(self.parent, f"DiCyc: a folder of domain {domain} volumes", start)
        if not folder:
            return
        if folder not in paths:
            paths.append(folder)
        lineEdit.currentPath = ";".join(paths)

    def outputDirectory(self):
        path = self.ui.outputDirectoryPathLineEdit.currentPath.strip()
        return os.path.abspath(os.path.expanduser(path)) if path else ""

    def onMethodChanged(self, index=None):
        self.ui.methodDescriptionLabel.text = self.ui.methodComboBox.currentData or ""

    def updateButtons(self, *args):
        running = self.logic is not None and self.logic.running
        outDir = self.outputDirectory()
        busy = None if running or not outDir else self.logic.in_use(outDir)
        hasRun = bool(outDir) and self.logic.has_checkpoint(outDir)
        self.ui.startButton.enabled = not running and not busy
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = not running and hasRun and not busy
        self.ui.useForSynthesisButton.enabled = bool(outDir) and self.logic.model_path(outDir) is not None
        for name in ("dataCollapsibleButton", "methodCollapsibleButton", "outputCollapsibleButton"):
            getattr(self.ui, name).enabled = not running
        if busy:
            self.ui.statusLabel.text = busy[0].upper() + busy[1:]

    # ----------------------------------------------------------------- actions
    def _refuseBusyFolder(self, outDir):
        busy = self.logic.in_use(outDir)
        if busy:
            slicer.util.errorDisplay(busy[0].upper() + busy[1:])
            self.updateButtons()
        return bool(busy)

    def onStart(self):
        outDir = self.outputDirectory()
        if not outDir:
            slicer.util.errorDisplay("Choose an output folder for the training run.")
            return
        if self._refuseBusyFolder(outDir):
            return
        if self.logic.has_checkpoint(outDir):
            if slicer.util.confirmYesNoDisplay(
                    f"{outDir} already holds a training run. Resume it from its last checkpoint instead?\n\n"
                    "(To start a new run, choose another output folder.)"):
                self.onResume()
            return
        itemsA = self.domainItems(self.ui.domainAPathLineEdit, self.ui.domainANodesComboBox)
        itemsB = self.domainItems(self.ui.domainBPathLineEdit, self.ui.domainBNodesComboBox)
        if not itemsA or not itemsB:
            slicer.util.errorDisplay("Choose volumes for both domain A and domain B (files, folders or scene volumes).")
            return
        if not DiCycDependencies.ensureDependencies("training"):
            return
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            inputs = os.path.join(outDir, "inputs")
            specsA = self.logic.domain_inputs(slicer.mrmlScene, itemsA, inputs, prefix="A")
            specsB = self.logic.domain_inputs(slicer.mrmlScene, itemsB, inputs, prefix="B")
            self.logic.start(self.ui.methodComboBox.currentText, specsA, specsB, outDir, self.options())
            self.ui.outputDirectoryPathLineEdit.addCurrentPathToHistory()
            self.onStarted()

    def onResume(self):
        outDir = self.outputDirectory()
        if not outDir or not self.logic.has_checkpoint(outDir):
            slicer.util.errorDisplay("The output folder holds no training run to resume.")
            return
        if self._refuseBusyFolder(outDir):
            return
        if not DiCycDependencies.ensureDependencies("training"):
            return
        with slicer.util.tryWithErrorDisplay("Could not resume training.", waitCursor=True):
            self.logic.resume(outDir, {"device": self.options()["device"]})
            self.onStarted()

    def onStop(self):
        with slicer.util.tryWithErrorDisplay("Could not stop training.", waitCursor=True):
            self.logic.stop()
        self.onTimer()

    def onStarted(self):
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setRange(0, 0)  # busy until the first event says how many iterations
        self.ui.etaLabel.text = ""
        self.ui.statusLabel.text = "Starting…"
        self.shownPreview = None
        self.ui.previewLabel.setPixmap(qt.QPixmap())
        self.ui.previewLabel.text = "The latest preview (A→B and B→A) appears here after the first epoch."
        self.updateButtons()
        self.timer.start()
        self.onTimer()

    def onTimer(self):
        """Poll the training (never blocks) and show what arrived."""
        state = self.logic.poll()
        if state is None:
            self.timer.stop()
            return
        for line in state.new_log:
            self.ui.logTextEdit.appendPlainText(line)
        if state.total:
            self.ui.progressBar.setRange(0, state.total)
            self.ui.progressBar.value = state.iteration
            self.ui.progressBar.setFormat("%v / %m iterations (%p%)")
        self.ui.etaLabel.text = state.eta_text()
        self.ui.statusLabel.text = state.status_text()
        if state.history_changed and state.history:
            self.updateLossPlot(state)
        if state.preview and state.preview != self.shownPreview and os.path.exists(state.preview):
            self.showPreview(state.preview)
        if state.finished:
            self.timer.stop()
            self.onFinished(state)

    def onFinished(self, state):
        if self.ui.progressBar.maximum == 0:
            self.ui.progressBar.setRange(0, 1)
        self.updateButtons()
        if state.done:
            self.ui.progressBar.value = self.ui.progressBar.maximum
            model = self.logic.model_path(self.outputDirectory())
            if model:
                try:
                    self.ui.statusLabel.text = state.status_text() + "\nModel: " + self.logic.model_summary(model)
                except Exception as exc:  # a card that cannot be read still leaves a usable status line
                    logging.warning("DiCyc Training: cannot read the model card of %s: %s", model, exc)
        elif state.error is not None:
            slicer.util.errorDisplay("Training failed: " + state.error, detailedText="\n".join(state.log[-60:]))

    def updateLossPlot(self, state):
        table, chart = self.logic.update_loss_plot(slicer.mrmlScene, state)
        if chart is not self.shownChart:  # first chart, or a new one after a scene close
            self.showChart(chart)

    def showChart(self, chart):
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        self.shownChart = chart

    def onShowLossPlot(self):
        state = self.logic.state
        if state is None:
            from DiCycTrainingLib.logic import TrainingState

            outDir = self.outputDirectory()
            if not outDir:
                return
            state = TrainingState.from_events_file(os.path.join(outDir, "events.jsonl"), outDir)
        if not state.history:
            slicer.util.infoDisplay("No losses have been logged yet.")
            return
        table, chart = self.logic.update_loss_plot(slicer.mrmlScene, state)
        self.showChart(chart)

    def showPreview(self, path):
        pixmap = qt.QPixmap(path)
        if pixmap.isNull():
            return
        width = max(self.ui.previewLabel.width, 200)
        self.ui.previewLabel.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))
        self.ui.previewLabel.toolTip = path
        self.shownPreview = path

    def onUseForSynthesis(self):
        """Hand the run's model to DiCyc Synthesis: the path goes to the application setting
        ``DiCyc/ModelPath`` (the Synthesis module reads it when entered), then that module opens."""
        model = self.logic.model_path(self.outputDirectory())
        if not model:
            slicer.util.errorDisplay("This output folder holds no model yet.")
            return
        slicer.app.settings().setValue(MODEL_PATH_SETTING, model)
        try:
            slicer.util.selectModule("DiCycSynthesis")
        except Exception as exc:
            slicer.util.errorDisplay(f"Could not open DiCyc Synthesis ({exc}). The model is {model}.")


#
# DiCycTrainingLogic (Slicer-style access; the work is in DiCycTrainingLib.logic)
#
class DiCycTrainingLogic(ScriptedLoadableModuleLogic):
    """For scripts inside Slicer: ``DiCycTrainingLogic().training`` is a
    :class:`DiCycTrainingLib.logic.TrainingLogic` that runs children with PythonSlicer."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from DiCycTrainingLib.logic import TrainingLogic

        self.training = TrainingLogic(python=pythonSlicerExecutable())


#
# DiCycTrainingTest
#
class DiCycTrainingTest(ScriptedLoadableModuleTest):
    """Runs a tiny training (a few iterations of 4-channel networks) through the logic on two
    synthetic scene volumes. Skipped when torch is not installed."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TrainingFromSceneVolumes()

    def _phantoms(self):
        import numpy as np

        z, y, x = np.mgrid[0:12, 0:40, 0:40].astype(np.float32)
        r = np.sqrt(((x - 20) / 15.0) ** 2 + ((y - 19) / 17.0) ** 2 + ((z - 6) / 14.0) ** 2)
        mr = (np.where(r < 1, 280.0, 0.0) + np.where(r < 0.75, 180.0, 0.0)).astype(np.float32)
        ct = np.full(r.shape, -1000, dtype=np.int16)
        ct[r < 1] = 40
        ct[(r >= 0.82) & (r < 1)] = 1100
        ijkToRAS = np.diag([-2.0, -2.0, 2.0, 1.0])
        mrNode = slicer.util.addVolumeFromArray(mr, ijkToRAS=ijkToRAS, name="DiCycTest MR")
        ctNode = slicer.util.addVolumeFromArray(ct, ijkToRAS=ijkToRAS, name="DiCycTest CT")
        return mrNode, ctNode

    def test_TrainingFromSceneVolumes(self):
        self.delayDisplay("Starting the DiCyc Training test")
        missing = DiCycDependencies.missingPackages("training")
        if missing:
            self.delayDisplay("Skipped: " + ", ".join(missing) + " not installed (install the PyTorch extension).")
            return
        from DiCycTrainingLib.logic import TrainingLogic

        mrNode, ctNode = self._phantoms()
        logic = TrainingLogic(python=pythonSlicerExecutable())
        work = tempfile.mkdtemp(prefix="DiCycTrainingTest-")
        specsA = logic.domain_inputs(slicer.mrmlScene, [mrNode], os.path.join(work, "inputs"), prefix="A")
        specsB = logic.domain_inputs(slicer.mrmlScene, [ctNode.GetID()], os.path.join(work, "inputs"), prefix="B")
        self.assertEqual(len(specsA), 1)
        self.assertTrue(os.path.exists(specsB[0]))
        options = {"ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32, "spacing": 8, "device": "cpu",
                   "iterations": 4, "checkpoint_every": 2, "epoch_length": 2, "log_every": 1}
        runDir = os.path.join(work, "run")
        state = logic.start("cyclegan", specsA, specsB, runDir, options, env={"DICYC_CACHE": os.path.join(work, "cache")})
        deadline = time.monotonic() + 600
        while not state.finished and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.2)
            state = logic.poll()
        if not state.finished:
            logic.stop()
        self.assertTrue(state.done, f"training did not finish: {state.error}\n" + "\n".join(state.log[-20:]))
        self.assertEqual(state.iteration, 4)
        self.assertTrue(os.path.exists(logic.model_path(runDir)))
        self.assertTrue(state.preview and os.path.exists(state.preview))
        table, chart = logic.update_loss_plot(slicer.mrmlScene, state)
        self.assertEqual(table.GetNumberOfRows(), 4)
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), len(state.loss_names))
        shutil.rmtree(work, ignore_errors=True)
        self.delayDisplay("Test passed")
