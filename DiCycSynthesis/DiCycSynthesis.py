"""DiCyc Synthesis: synthesise a CT (or another modality) from an MR inside 3D Slicer, and judge it.

The panel only wires its ``.ui`` to the logic in :mod:`DiCycSynthesisLib` (MRML, VTK,
numpy and the bundled ``dicyc`` engine; no Qt), which is tested on real MRML nodes outside
Slicer. **Synthesize CT** runs ``PythonSlicer -m dicyc synthesize … --progress-jsonl`` in a
separate process that a ``QTimer`` polls, so Slicer never freezes; **Cancel** kills the whole
process tree. The result overlays the input voxel for voxel and gets a CT window. **Compare**
builds checkerboard and error-image volumes and sets up Slicer's slice compositing (layer reveal
or side by side) and can centre the views on a segment (the aorta) with one view through a
second segment (the spine); **ROI metrics** scores segments (Segment Editor) or a Markups ROI box
into a table node that can be exported as CSV.

The module also registers DiCyc's samples with Slicer's *Sample Data* module (category "DiCyc":
``DiCycAbdomen``, the abdominal MR/CT phantom with its aorta and spine, and ``DiCycHead``): the
files are the engine's own (``dicyc samples``), prepared from Debian and PyPI packages on first
use and never downloaded from the web (:mod:`DiCycSynthesisLib.samples`).
"""

import importlib.util
import logging
import os
import shutil
import sys
import tempfile

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import DiCycDependencies
from DiCycDependencies import MODEL_PATH_SETTING, pythonSlicerExecutable

POLL_INTERVAL_MS = 200
MODEL_FILE_ITEM = "Model file…"
NO_SEGMENT_ITEM = "(none)"
#: application setting: the user's models folder (default ~/.dicyc/models)
MODELS_FOLDER_SETTING = "DiCyc/ModelsFolder"


#
# DiCycSynthesis
#
class DiCycSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DiCyc Synthesis"
        self.parent.categories = ["DiCyc"]
        self.parent.dependencies = []
        self.parent.contributors = ["DiCyc contributors"]
        self.parent.helpText = """
Synthesise one imaging modality from another — typically a <b>CT from an MR</b> — with a model
trained on unpaired data (DiCyc Training or <code>dicyc train</code>), and check the result.
<ul>
<li><b>Inputs</b>: the input volume, a model (bundled, from your models folder, or a
<code>.safetensors</code> file; its card shows the method, domains and training spacing), the
direction, device and precision. <b>Add to my models</b> copies a model file into your models
folder (<code>~/.dicyc/models</code>), <b>Remove</b> deletes one from it, <b>Open folder</b> shows it.
<b>Synthesize CT</b> runs in a background process with a progress bar and a log; <b>Cancel</b>
stops it. The synthetic volume overlays the input voxel for voxel and opens with a soft-tissue CT
window (W 400 / L 40 HU); the output selector then goes back to "Create new volume", so the next
run never overwrites it.</li>
<li><b>Compare</b>: a checkerboard of synthetic and reference (broken edges at tile borders mean
misalignment — check the aorta and the spine), an error image |synthetic − reference| with a colour
table over the reference, and an overlay with layer reveal (opacity) or side-by-side views.
<b>Centre on</b> a segment (e.g. the aorta) puts every view through its centre, and <b>Second view</b>
(e.g. the spine) puts one view — Yellow, or Green in side-by-side — through another segment's centre, so
both alignments are judged at once; <b>Field of view</b> zooms to that many millimetres.
<b>Restore views</b> (also on leaving the module or collapsing Compare) gives back the layout, slice
orientations and linking you had before.</li>
<li><b>ROI metrics</b>: MSE, PSNR, SSIM and MAE per segment of a segmentation (draw e.g. the aorta in
Segment Editor) or inside a Markups ROI box, in a table you can export as CSV. The numbers are
those of <code>dicyc evaluate --mask</code>.</li>
</ul>
<p>Try it on <b>Sample Data → DiCyc → DiCycAbdomen</b>: an abdominal MR, its CT, the CT in the MR's posture
(ground truth) and the aorta and spine segments, all selected here — click <b>Synthesize CT</b>,
<b>Checkerboard</b> and <b>Compute metrics</b>. The files are prepared by <code>dicyc samples</code> from
Debian/PyPI packages the first time (nothing is downloaded from the web).</p>
"""
        self.parent.acknowledgementText = """
DiCyc follows Wang C., Yang G., Papanastasiou G., Tsaftaris S.A., Newby D.E., Gray C., Macnaught G.,
MacGillivray T.J., "DiCyc: GAN-based deformation invariant cross-domain information fusion for
medical image synthesis", Information Fusion 67 (2021) 147–160, building on CycleGAN (Zhu et al. 2017).
PyTorch is provided by the PyTorch extension (SlicerPyTorch).
"""
        # Sample Data exists once the application has started (as in Slicer's module templates)
        slicer.app.connect("startupCompleted()", registerSampleData)


def _lib():
    """The module's logic library (imported lazily: it imports the bundled ``dicyc`` engine)."""
    import DiCycSynthesisLib

    return DiCycSynthesisLib


#
# DiCyc's samples in Slicer's Sample Data module
#
def registerSampleData():
    """Register DiCyc's samples (DiCycAbdomen, DiCycHead) with Slicer's Sample Data module.

    Each source names the engine's prepared files by ``file://`` URI (nothing is downloaded) and
    has a :class:`DiCycSampleLoader` as its ``customDownloader``: clicking the sample prepares
    missing files with the engine and loads the set, segments included.
    """
    try:
        import SampleData
    except ImportError:  # Slicer runs without its Sample Data module
        logging.info("DiCyc: the Sample Data module is not loaded; DiCyc's samples are not registered.")
        return
    lib = _lib()
    from DiCycSynthesisLib import samples

    logic = SampleData.SampleDataLogic
    if hasattr(logic, "registerCustomSampleDataCategory"):  # Slicer 5.9 and later
        logic.registerCustomSampleDataCategory(samples.CATEGORY, samples.CATEGORY_TITLE)
    thumbnail = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons", "DiCycSynthesis.png")
    for name in lib.SAMPLE_SETS:
        logic.registerCustomSampleDataSource(customDownloader=DiCycSampleLoader(name),
                                             **lib.registration_arguments(name, thumbnail=thumbnail))


class DiCycSampleLoader:
    """The ``customDownloader`` of a DiCyc sample: Sample Data calls it with the source when the
    sample's button is clicked; it runs :func:`loadSampleData`."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        # Sample Data compares sources by their text: a stable one keeps a Reload from adding a twin
        return f"DiCycSampleLoader({self.name!r})"

    def __call__(self, source=None):
        # the module as it is now (after a Reload, its new code)
        return getattr(sys.modules.get(__name__), "loadSampleData", loadSampleData)(self.name)


def loadSampleData(name, selectModule=True):
    """What clicking a DiCyc sample in Sample Data does: prepare its files with the engine on first use
    (asking once for the packages that needs), load the set, select it in DiCyc Synthesis, show the
    first volume and open the module. Returns {role: node} ({} when the user declines the packages); an
    error is shown in one sentence and raised again, as ``slicer.util.tryWithErrorDisplay`` does."""
    lib = _lib()
    if lib.missing_files(name) and not DiCycDependencies.ensureDependencies("samples"):
        return {}
    nodes = {}
    with slicer.util.tryWithErrorDisplay(f"Could not load the DiCyc sample {name}.", waitCursor=True):
        if lib.missing_files(name):
            slicer.util.showStatusMessage(f"Preparing the DiCyc sample {name} (first use only)…")
            slicer.app.processEvents()
        nodes = DiCycSynthesisLogic().loadSample(name)
        first = nodes[lib.sample_set(name).volumes[0].role]
        slicer.util.setSliceViewerLayers(background=first, foreground=None, fit=True)
        if selectModule:
            slicer.util.selectModule("DiCycSynthesis")
        slicer.util.showStatusMessage(f"DiCyc sample {name} loaded: {', '.join(n.GetName() for n in nodes.values())}.",
                                      5000)
    return nodes


#
# DiCycSynthesisWidget
#
class DiCycSynthesisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    #: parameter name → selector for the nodes the panel keeps in its parameter node
    NODE_PARAMETERS = {
        "InputVolume": "inputVolumeSelector",
        "OutputVolume": "outputVolumeSelector",
        "SyntheticVolume": "syntheticVolumeSelector",
        "ReferenceVolume": "referenceVolumeSelector",
        "Segmentation": "segmentationSelector",
        "ROI": "roiSelector",
        "CompareSegmentation": "compareSegmentationSelector",
    }
    #: parameter name → combo box of the segment it names (a segment ID of the Compare segmentation)
    SEGMENT_PARAMETERS = {"CenterSegment": "centerSegmentComboBox", "AlsoSegment": "alsoSegmentComboBox"}
    #: packages that Reload reads from disk again (with DiCycDependencies.SHARED_PACKAGES)
    LIB_PACKAGES = ("DiCycSynthesisLib",)

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.timer = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._metricsTableNode = None
        self._modelUsable = False
        self._savedViews = None  # the views as they were before Compare changed them
        self._outputNodeID = None  # the output chosen when the running synthesis started
        self._observedSegmentation = None  # the vtkSegmentation whose segments the Compare combos list

    # ----------------------------------------------------------------- set-up
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DiCycSynthesis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = DiCycSynthesisLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        DiCycDependencies.addAvailableDevices(self.ui.deviceComboBox)
        self.populateModels()
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChoiceChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        self.ui.removeModelButton.connect("clicked(bool)", self.onRemoveModel)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        for selector in self.NODE_PARAMETERS.values():
            getattr(self.ui, selector).connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for combo in (self.ui.directionComboBox, self.ui.deviceComboBox, self.ui.precisionComboBox):
            combo.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.batchSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.tilesSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.zoomSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        for combo in self.SEGMENT_PARAMETERS.values():
            getattr(self.ui, combo).connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.compareSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                                    self.onCompareSegmentationChanged)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        self.ui.revealRadioButton.connect("toggled(bool)", self.onViewModeChanged)

        self.ui.synthesizeButton.connect("clicked(bool)", self.onSynthesize)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onCheckerboard)
        self.ui.errorImageButton.connect("clicked(bool)", self.onErrorImage)
        self.ui.overlayButton.connect("clicked(bool)", self.onOverlay)
        self.ui.restoreViewsButton.connect("clicked(bool)", self.restoreViews)
        self.ui.centerViewsButton.connect("clicked(bool)", self.onCenterViews)
        self.ui.compareCollapsibleButton.connect("contentsCollapsed(bool)", self.onCompareCollapsed)
        self.ui.computeMetricsButton.connect("clicked(bool)", self.onComputeMetrics)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsv)

        self.ui.progressBar.setValue(0)
        self.initializeParameterNode()
        self.onModelChoiceChanged()

    def cleanup(self):
        """Slicer closes or the module reloads: no background process may outlive the panel."""
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None:
            self.logic.synthesis.cancel()
        self.removeObservers()
        self._observedSegmentation = None

    def onReload(self):
        """Developer Reload: read the Lib packages from disk again too, not only this file."""
        DiCycDependencies.forgetPackages(self.LIB_PACKAGES + DiCycDependencies.SHARED_PACKAGES)
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()
        self.takeModelFromTraining()
        self.onSegmentsChanged()

    def exit(self):
        self.restoreViews()
        self._unobserveParameterNode()

    def _unobserveParameterNode(self):
        node = self._parameterNode
        if node is not None and self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode):
            self.removeObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        if self.logic is not None and self.logic.synthesis.running:
            self.timer.stop()
            self.logic.synthesis.cancel()
            self.setRunning(False, "Cancelled: the scene was closed.")
        self.setParameterNode(None)
        self._observeSegmentation(None)
        self._metricsTableNode = None
        self._savedViews = None  # the views are reset with the scene

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.updateButtons()

    # ----------------------------------------------------------------- parameter node
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.GetNodeReference("InputVolume"):
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.SetNodeReferenceID("InputVolume", first.GetID())

    def setParameterNode(self, node):
        self._unobserveParameterNode()
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    @staticmethod
    def _selectText(combo, text):
        index = combo.findText(text)
        if index >= 0:
            combo.currentIndex = index

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            p = self._parameterNode
            for name, selector in self.NODE_PARAMETERS.items():
                getattr(self.ui, selector).setCurrentNode(p.GetNodeReference(name))
            self._selectText(self.ui.directionComboBox, p.GetParameter("Direction") or "a2b")
            self._selectText(self.ui.deviceComboBox, p.GetParameter("Device") or "auto")
            self._selectText(self.ui.precisionComboBox, p.GetParameter("Precision") or "auto")
            self.ui.batchSpinBox.value = int(p.GetParameter("Batch") or 8)
            self.ui.tilesSpinBox.value = int(p.GetParameter("Tiles") or 8)
            self.ui.zoomSpinBox.value = int(float(p.GetParameter("ZoomMm") or 0))
            self.fillSegmentComboBoxes()
            model = p.GetParameter("ModelPath")
            if model and model != self.currentModelPath():
                self.selectModelPath(model)
        finally:
            self._updatingGUIFromParameterNode = False
        self.updateButtons()

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        p = self._parameterNode
        was = p.StartModify()
        for name, selector in self.NODE_PARAMETERS.items():
            p.SetNodeReferenceID(name, getattr(self.ui, selector).currentNodeID)
        p.SetParameter("Direction", self.ui.directionComboBox.currentText)
        p.SetParameter("Device", self.ui.deviceComboBox.currentText)
        p.SetParameter("Precision", self.ui.precisionComboBox.currentText)
        p.SetParameter("Batch", str(self.ui.batchSpinBox.value))
        p.SetParameter("Tiles", str(self.ui.tilesSpinBox.value))
        p.SetParameter("ZoomMm", str(self.ui.zoomSpinBox.value))
        for name, combo in self.SEGMENT_PARAMETERS.items():
            p.SetParameter(name, self._segmentChoice(getattr(self.ui, combo)))
        p.SetParameter("ModelPath", self.currentModelPath() or "")
        p.EndModify(was)
        self.updateButtons()

    # ----------------------------------------------------------------- model
    def modelsFolder(self):
        """The user's models folder (setting DiCyc/ModelsFolder, default ~/.dicyc/models)."""
        return _lib().user_models_folder(slicer.app.settings().value(MODELS_FOLDER_SETTING) or None)

    def populateModels(self, select=None):
        """Bundled models, then the user's models folder, then "Model file…"; ``select``: a path to choose."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for entry in _lib().list_models(self.modelsFolder()):
                label = entry["name"] if entry["kind"] == "bundled" else f"{entry['name']} (my models)"
                combo.addItem(label, str(entry["path"]))
                combo.setItemData(combo.count - 1, str(entry["path"]), qt.Qt.ToolTipRole)
            combo.addItem(MODEL_FILE_ITEM, "")
        finally:
            combo.blockSignals(wasBlocked)
        if select:
            self.selectModelPath(str(select))
        else:
            self.onModelChoiceChanged()

    def currentModelPath(self):
        data = self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex)
        if data:
            return str(data)
        return self.ui.modelPathLineEdit.currentPath or None

    def selectModelPath(self, path):
        combo = self.ui.modelComboBox
        for i in range(combo.count):
            if combo.itemData(i) and os.path.normcase(str(combo.itemData(i))) == os.path.normcase(path):
                combo.currentIndex = i
                self.onModelChoiceChanged()
                return
        combo.currentIndex = combo.findText(MODEL_FILE_ITEM)
        self.ui.modelPathLineEdit.currentPath = path
        self.onModelChoiceChanged()

    def takeModelFromTraining(self):
        """A model handed over by DiCyc Training ("Use for synthesis") becomes the selected model."""
        settings = slicer.app.settings()
        path = settings.value(MODEL_PATH_SETTING)
        if path and os.path.isfile(str(path)):
            self.selectModelPath(str(path))
            self.updateParameterNodeFromGUI()
        if path:
            settings.remove(MODEL_PATH_SETTING)

    def onModelChoiceChanged(self, *args):
        fileChoice = not self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex)
        self.ui.modelPathLineEdit.setVisible(fileChoice)
        self.onModelPathChanged()

    def onModelPathChanged(self, *args):
        path = self.currentModelPath()
        self._modelUsable = False
        if not path:
            self.ui.modelCardLabel.text = "(no model selected)"
        elif not os.path.isfile(path):
            self.ui.modelCardLabel.text = f"{path} does not exist."
        else:
            summary = _lib().model_summary(path)
            self.ui.modelCardLabel.text = summary["text"]
            self._modelUsable = "error" not in summary
            if self._modelUsable:
                labels = {"a2b": f"a2b: {summary['domain_a']} → {summary['domain_b']}",
                          "b2a": f"b2a: {summary['domain_b']} → {summary['domain_a']}"}
                for i, key in enumerate(("a2b", "b2a")):
                    self.ui.directionComboBox.setItemData(i, labels[key], qt.Qt.ToolTipRole)
                self.ui.synthesizeButton.toolTip = (
                    f"Run the model on the input volume: {labels[self.ui.directionComboBox.currentText]}.")
        self.updateParameterNodeFromGUI()
        self.updateButtons()

    def onAddModel(self):
        """Copy the model file chosen with "Model file…" into the user's models folder."""
        path = self.currentModelPath()
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Could not add the model to your models folder.", waitCursor=True):
            added = _lib().add_model(path, self.modelsFolder())
            self.populateModels(select=added)
            slicer.util.showStatusMessage(f"{added.name} is now in {added.parent}", 3000)

    def onRemoveModel(self):
        path = self.currentModelPath()
        if not path or not _lib().is_user_model(path, self.modelsFolder()):
            return
        if not slicer.util.confirmOkCancelDisplay(
                f"Delete {os.path.basename(path)} from your models folder ({self.modelsFolder()})?",
                "DiCyc: remove model"):
            return
        with slicer.util.tryWithErrorDisplay("Could not remove the model.", waitCursor=True):
            _lib().remove_model(path, self.modelsFolder())
            self.populateModels()

    def onOpenModelsFolder(self):
        folder = self.modelsFolder()
        with slicer.util.tryWithErrorDisplay(f"Could not open {folder}."):
            folder.mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # ----------------------------------------------------------------- synthesis
    def updateButtons(self, *args):
        running = self.logic is not None and self.logic.synthesis.running
        self.ui.synthesizeButton.enabled = (not running and self.ui.inputVolumeSelector.currentNode() is not None
                                            and self._modelUsable)
        self.ui.cancelButton.enabled = running
        model = self.currentModelPath()
        userModel = bool(model) and _lib().is_user_model(model, self.modelsFolder())
        fileChoice = not self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex)
        self.ui.addModelButton.enabled = self._modelUsable and fileChoice and not userModel
        self.ui.removeModelButton.enabled = userModel
        haveBoth = (self.ui.syntheticVolumeSelector.currentNode() is not None
                    and self.ui.referenceVolumeSelector.currentNode() is not None)
        for button in (self.ui.checkerboardButton, self.ui.errorImageButton, self.ui.overlayButton,
                       self.ui.computeMetricsButton):
            button.enabled = haveBoth
        self.ui.restoreViewsButton.enabled = self._savedViews is not None
        haveVolume = (self.ui.syntheticVolumeSelector.currentNode() is not None
                      or self.ui.referenceVolumeSelector.currentNode() is not None)
        self.ui.centerViewsButton.enabled = (haveVolume
                                             and self.ui.compareSegmentationSelector.currentNode() is not None
                                             and bool(self._segmentChoice(self.ui.centerSegmentComboBox)))
        self.ui.exportCsvButton.enabled = self._metricsTableNode is not None

    def setRunning(self, running, message=""):
        self.ui.statusLabel.text = message
        if running:
            self.ui.progressBar.setValue(0)
        self.updateButtons()

    def onSynthesize(self):
        inputNode = self.ui.inputVolumeSelector.currentNode()
        model = self.currentModelPath()
        if inputNode is None or not model:
            slicer.util.errorDisplay("Select an input volume and a model first.")
            return
        if not DiCycDependencies.ensureDependencies("synthesis"):
            return
        options = dict(direction=self.ui.directionComboBox.currentText, device=self.ui.deviceComboBox.currentText,
                       precision=self.ui.precisionComboBox.currentText, batch=self.ui.batchSpinBox.value)
        outputNode = self.ui.outputVolumeSelector.currentNode()
        self._outputNodeID = outputNode.GetID() if outputNode is not None else None
        self.ui.logTextEdit.clear()
        if self.ui.backgroundCheckBox.checked:
            with slicer.util.tryWithErrorDisplay("Could not start the synthesis.", waitCursor=True):
                self.logic.synthesis.start(slicer.mrmlScene, inputNode, model, **options)
                self.setRunning(True, "Starting the background process…")
                self.ui.logTextEdit.appendPlainText(" ".join(self.logic.synthesis.process.command))
                self.timer.start()
            self.updateButtons()
            return
        with slicer.util.tryWithErrorDisplay("Synthesis failed.", waitCursor=True):
            self.setRunning(True, "Synthesising inside Slicer (the window does not respond until it is done)…")
            slicer.app.processEvents()
            node, info = _lib().synthesize_in_process(slicer.mrmlScene, inputNode, model, output_node=outputNode,
                                                      **options)
            message = (f"Done: {info['slices']} slices on {info['device']} ({info['precision']}) "
                       f"in {info['seconds']:.1f} s.")
            self.ui.logTextEdit.appendPlainText(message)
            self.showResult(node, inputNode, message)
        self.updateButtons()

    def onTimer(self):
        status = self.logic.synthesis.poll()
        for event in status["events"]:
            if event.get("event") == "log":
                self.ui.logTextEdit.appendPlainText(str(event.get("message", "")))
        self.ui.progressBar.setValue(int(round(100 * status["fraction"])))
        eta = status.get("eta_s")
        etaText = f", about {int(eta) // 60}:{int(eta) % 60:02d} left" if eta else ""
        self.ui.statusLabel.text = f"{status['message']}{etaText}"
        if status["running"]:
            return
        self.timer.stop()
        inputNode = slicer.mrmlScene.GetNodeByID(self.logic.synthesis.input_node_id or "")
        outputNode = slicer.mrmlScene.GetNodeByID(self._outputNodeID) if self._outputNodeID else None
        try:
            node = self.logic.synthesis.finish(slicer.mrmlScene, outputNode)
        except Exception as exc:  # one sentence from the engine; details in the log
            logging.error("DiCyc synthesis failed:\n%s", "\n".join(self.logic.synthesis.log[-30:]))
            self.setRunning(False, "Failed.")
            slicer.util.errorDisplay(str(exc), detailedText="\n".join(self.logic.synthesis.log[-50:]))
            return
        self.showResult(node, inputNode, "Done.")

    def showResult(self, node, inputNode, message):
        """The result goes to the Compare section; the output selector goes back to "Create new
        volume", so that the next synthesis never overwrites this one."""
        self.ui.progressBar.setValue(100)
        self.ui.syntheticVolumeSelector.setCurrentNode(node)
        self.ui.outputVolumeSelector.setCurrentNode(None)
        slicer.util.setSliceViewerLayers(background=node, foreground=inputNode, foregroundOpacity=0.0, fit=True)
        self.setRunning(False, message)

    def onCancel(self):
        self.timer.stop()
        with slicer.util.tryWithErrorDisplay("Could not cancel the synthesis.", waitCursor=True):
            self.logic.synthesis.cancel()
        self.ui.progressBar.setValue(0)
        self.setRunning(False, "Cancelled.")

    # ----------------------------------------------------------------- compare
    def _pair(self):
        return self.ui.syntheticVolumeSelector.currentNode(), self.ui.referenceVolumeSelector.currentNode()

    def _layoutMode(self):
        return "reveal" if self.ui.revealRadioButton.checked else "side-by-side"

    def _keepViews(self):
        """Before the first change a comparison makes to the views, remember how they were."""
        if self._savedViews is None:
            self._savedViews = _lib().save_view_state(slicer.mrmlScene)
        self.updateButtons()

    def restoreViews(self, *args):
        """Give the views back as they were before Compare (layout, orientations, linked control)."""
        if self._savedViews is None:
            return
        _lib().restore_view_state(slicer.mrmlScene, self._savedViews)
        self._savedViews = None
        self.updateButtons()

    def onCompareCollapsed(self, collapsed):
        if collapsed:
            self.restoreViews()

    # segments to centre the views on
    @staticmethod
    def _segmentChoice(combo):
        """The segment ID a combo box has selected ("" for none)."""
        return str(combo.itemData(combo.currentIndex) or "") if combo.currentIndex >= 0 else ""

    def _observeSegmentation(self, node):
        """Follow the segments of the Compare segmentation (added, removed, renamed in Segment Editor)."""
        segmentation = node.GetSegmentation() if node is not None else None
        if segmentation is self._observedSegmentation:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self.onSegmentsChanged)
        self._observedSegmentation = segmentation
        if segmentation is not None:
            for event in events:
                self.addObserver(segmentation, event, self.onSegmentsChanged)

    def fillSegmentComboBoxes(self):
        """List the Compare segmentation's segments in "Centre on" and "Second view", selecting the
        segments the parameter node names ("(none)" where it names none or one that is gone)."""
        node = self.ui.compareSegmentationSelector.currentNode()
        self._observeSegmentation(node)
        segments = _lib().segment_ids(node)
        for name, comboName in self.SEGMENT_PARAMETERS.items():
            combo = getattr(self.ui, comboName)
            wanted = (self._parameterNode.GetParameter(name) if self._parameterNode is not None
                      else self._segmentChoice(combo))
            wasBlocked = combo.blockSignals(True)
            try:
                combo.clear()
                combo.addItem(NO_SEGMENT_ITEM, "")
                for segmentId, segmentName in segments:
                    combo.addItem(segmentName, segmentId)
                combo.currentIndex = max(combo.findData(wanted), 0) if wanted else 0
            finally:
                combo.blockSignals(wasBlocked)
            combo.enabled = node is not None

    def onCompareSegmentationChanged(self, *args):
        self.fillSegmentComboBoxes()
        self.updateParameterNodeFromGUI()

    def onSegmentsChanged(self, caller=None, event=None):
        self.fillSegmentComboBoxes()
        self.updateParameterNodeFromGUI()

    def _centreOnSegments(self):
        """Centre the views on the "Centre on" segment, one view on the "Second view" segment, at the
        chosen field of view; nothing (None) when no segment is chosen."""
        segmentation = self.ui.compareSegmentationSelector.currentNode()
        centerId = self._segmentChoice(self.ui.centerSegmentComboBox)
        if segmentation is None or not centerId:
            return None
        synthetic, reference = self._pair()
        volume = synthetic if synthetic is not None else reference  # the grid the comparison volumes share
        views = _lib().centre_views(slicer.mrmlScene, volume, segmentation, centerId,
                                    self._segmentChoice(self.ui.alsoSegmentComboBox) or None,
                                    zoom_mm=self.ui.zoomSpinBox.value or None)
        names = dict(_lib().segment_ids(segmentation))
        byRole = {}
        for view, info in views.items():
            byRole.setdefault(info["role"], (names.get(info["segment"], info["segment"]), []))[1].append(view)
        text = "; ".join(f"{', '.join(viewNames)} through the centre of {segment}"
                         for segment, viewNames in byRole.values())
        slicer.util.showStatusMessage(f"Views centred: {text}.", 5000)
        return views

    def onCenterViews(self):
        with slicer.util.tryWithErrorDisplay("Could not centre the views.", waitCursor=True):
            self._centreOnSegments()

    def onCheckerboard(self):
        synthetic, reference = self._pair()
        if not DiCycDependencies.ensureDependencies("comparison"):
            return
        with slicer.util.tryWithErrorDisplay("Could not make the checkerboard.", waitCursor=True):
            board = _lib().make_checkerboard_node(slicer.mrmlScene, synthetic, reference, self.ui.tilesSpinBox.value)
            self._keepViews()
            _lib().setup_overlay(slicer.mrmlScene, board, None, opacity=0.0, layout="reveal")
            slicer.util.resetSliceViews()
            self._centreOnSegments()

    def onErrorImage(self):
        synthetic, reference = self._pair()
        if not DiCycDependencies.ensureDependencies("comparison"):
            return
        with slicer.util.tryWithErrorDisplay("Could not make the error image.", waitCursor=True):
            error = _lib().make_error_node(slicer.mrmlScene, synthetic, reference)
            self._keepViews()
            _lib().setup_overlay(slicer.mrmlScene, reference, error, opacity=self.ui.opacitySliderWidget.value,
                                 layout="reveal")
            slicer.util.resetSliceViews()
            self._centreOnSegments()

    def onOverlay(self):
        synthetic, reference = self._pair()
        with slicer.util.tryWithErrorDisplay("Could not set up the views.", waitCursor=True):
            self._keepViews()
            _lib().setup_overlay(slicer.mrmlScene, synthetic, reference, opacity=self.ui.opacitySliderWidget.value,
                                 layout=self._layoutMode())
            slicer.util.resetSliceViews()
            self._centreOnSegments()

    def onOpacityChanged(self, value):
        for node in _lib().slice_composite_nodes(slicer.mrmlScene).values():
            if node.GetForegroundVolumeID():
                node.SetForegroundOpacity(value)

    def onViewModeChanged(self, *args):
        synthetic, reference = self._pair()
        if synthetic is not None and reference is not None:
            self.onOverlay()

    # ----------------------------------------------------------------- ROI metrics
    def onComputeMetrics(self):
        synthetic, reference = self._pair()
        if not DiCycDependencies.ensureDependencies("metrics"):
            return
        with slicer.util.tryWithErrorDisplay("Could not compute the metrics.", waitCursor=True):
            rows = _lib().roi_metrics(slicer.mrmlScene, synthetic, reference,
                                      segmentation_node=self.ui.segmentationSelector.currentNode(),
                                      roi_node=self.ui.roiSelector.currentNode())
            self._metricsTableNode = _lib().metrics_table_node(
                slicer.mrmlScene, rows, name=f"DiCyc metrics {synthetic.GetName()}", table_node=self._metricsTableNode)
            self.ui.metricsTableView.setMRMLTableNode(self._metricsTableNode)
            problems = [f"{r['segment']}: {r['error']}" for r in rows if r.get("error")]
            notes = [r["note"] for r in rows if r.get("note")]
            self.ui.metricsInfoLabel.text = "\n".join(problems + notes[:1])
        self.updateButtons()

    def onExportCsv(self):
        if self._metricsTableNode is None:
            return
        path = qt.QFileDialog.getSaveFileName(self.parent, "Export metrics", f"{self._metricsTableNode.GetName()}.csv",
                                              "CSV files (*.csv)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Could not export the metrics.", waitCursor=True):
            _lib().export_table_csv(self._metricsTableNode, path)
            slicer.util.showStatusMessage(f"Metrics written to {path}", 3000)


#
# DiCycSynthesisLogic — Slicer-style access for scripts; the work is in DiCycSynthesisLib
#
class DiCycSynthesisLogic(ScriptedLoadableModuleLogic):
    """``DiCycSynthesisLogic().synthesis`` is a :class:`DiCycSynthesisLib.process.SynthesisLogic`
    whose children run with PythonSlicer; the helpers below pass ``slicer.mrmlScene`` to the
    scene-parameterised functions of :mod:`DiCycSynthesisLib`."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.synthesis = _lib().SynthesisLogic(python=pythonSlicerExecutable())

    def setDefaultParameters(self, parameterNode):
        defaults = {"Direction": "a2b", "Device": "auto", "Precision": "auto", "Batch": "8", "Tiles": "8",
                    "ZoomMm": "0"}
        for name, value in defaults.items():
            if not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)

    def synthesize(self, inputNode, modelPath, outputNode=None, **options):
        """Synthesise inside Slicer (blocking); returns the output volume node."""
        return _lib().synthesize_in_process(slicer.mrmlScene, inputNode, modelPath, output_node=outputNode,
                                            **options)[0]

    def checkerboard(self, aNode, bNode, tiles=8):
        return _lib().make_checkerboard_node(slicer.mrmlScene, aNode, bNode, tiles)

    def errorImage(self, syntheticNode, referenceNode):
        return _lib().make_error_node(slicer.mrmlScene, syntheticNode, referenceNode)

    def roiMetrics(self, syntheticNode, referenceNode, segmentationNode=None, roiNode=None, tableNode=None):
        """Metrics per region into a table node (returned)."""
        rows = _lib().roi_metrics(slicer.mrmlScene, syntheticNode, referenceNode, segmentationNode, roiNode)
        return _lib().metrics_table_node(slicer.mrmlScene, rows, table_node=tableNode)

    def centreViews(self, volumeNode, segmentationNode, centerSegmentId, alsoSegmentId=None, zoomMm=None):
        """Slice views through a segment's centre, one view through a second segment's; {view: info}."""
        return _lib().centre_views(slicer.mrmlScene, volumeNode, segmentationNode, centerSegmentId, alsoSegmentId,
                                   zoom_mm=zoomMm)

    def loadSample(self, name, folder=None):
        """Load DiCyc sample ``name`` (``DiCycAbdomen``, ``DiCycHead``) into the scene — its files prepared
        by the engine on first use — and select it in this module's parameter node; {role: node}."""
        nodes = _lib().load_sample_set(slicer.mrmlScene, name, folder=folder, log=logging.info)
        _lib().apply_sample_parameters(self.getParameterNode(), name, nodes)
        return nodes


#
# DiCycSynthesisTest — in-Slicer self-test for users (Reload and Test)
#
class DiCycSynthesisTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CompareAndMetrics()
        self.setUp()
        self.test_Synthesis()
        self.setUp()
        self.test_AbdominalSampleLoop()

    def _phantom(self, name, scale=1.0, offset=0.0, seed=0):
        import numpy as np
        from dicyc.volume import Volume

        rng = np.random.default_rng(seed)
        z, y, x = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 48), np.linspace(-1, 1, 40), indexing="ij")
        body = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1
        array = np.where(body, 100.0, 0.0) + np.where((x ** 2 + y ** 2) < 0.05, 150.0, 0.0) + rng.normal(0, 4, x.shape)
        volume = Volume((array * scale + offset).astype(np.float32), (1.2, 1.2, 3.0), (-24.0, -28.0, -12.0))
        return _lib().add_volume_node(slicer.mrmlScene, volume, name)

    def test_CompareAndMetrics(self):
        import numpy as np

        self.delayDisplay("Compare views and ROI metrics on a phantom")
        lib = _lib()
        reference = self._phantom("reference CT", scale=4.0, offset=-1000.0, seed=1)
        synthetic = self._phantom("synthetic CT", scale=4.0, offset=-990.0, seed=2)
        board = lib.make_checkerboard_node(slicer.mrmlScene, synthetic, reference, 4)
        self.assertEqual(lib.volume_from_node(board).shape, lib.volume_from_node(synthetic).shape)
        error = lib.make_error_node(slicer.mrmlScene, synthetic, reference)
        expected = np.abs(lib.volume_from_node(synthetic).array - lib.volume_from_node(reference).array)
        self.assertTrue(np.allclose(lib.volume_from_node(error).array, expected))
        lib.setup_overlay(slicer.mrmlScene, reference, error, opacity=0.6, layout="reveal")
        for node in lib.slice_composite_nodes(slicer.mrmlScene).values():
            self.assertEqual(node.GetForegroundVolumeID(), error.GetID())
            self.assertAlmostEqual(node.GetForegroundOpacity(), 0.6)
        lib.setup_overlay(slicer.mrmlScene, synthetic, reference, layout="side-by-side")
        slicer.util.resetSliceViews()

        # a segment "aorta" from a labelmap, and a Markups ROI box
        ref = lib.volume_from_node(reference)
        labels = np.zeros(ref.shape, np.uint8)
        labels[2:6, 20:28, 16:24] = 1
        labelmap = lib.add_volume_node(slicer.mrmlScene, ref.with_array(labels), "aorta label",
                                       node_class="vtkMRMLLabelMapVolumeNode")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segmentation.GetSegmentation().GetNthSegment(0).SetName("aorta")
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
        roi.SetCenter(0.0, 0.0, 0.0)
        roi.SetSize(20.0, 20.0, 10.0)
        rows = lib.roi_metrics(slicer.mrmlScene, synthetic, reference, segmentation_node=segmentation, roi_node=roi)
        self.assertEqual([r["segment"] for r in rows], ["aorta", "box"])
        from dicyc.metrics import compute_metrics

        direct = compute_metrics(lib.volume_from_node(synthetic).array, ref.array, mask=labels == 1)
        self.assertAlmostEqual(rows[0]["mse"], direct["mse"], places=6)
        table = lib.metrics_table_node(slicer.mrmlScene, rows)
        self.assertEqual(table.GetNumberOfRows(), 2)
        path = os.path.join(tempfile.mkdtemp(prefix="dicyc-selftest-"), "metrics.csv")
        lib.export_table_csv(table, path)
        with open(path) as fh:
            self.assertTrue(fh.readline().startswith("Segment,MSE,PSNR,SSIM,MAE,Voxels"))
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        self.delayDisplay("Compare views and ROI metrics passed")

    def test_Synthesis(self):
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("safetensors") is None:
            self.delayDisplay("PyTorch or safetensors is not installed: synthesis test skipped")
            return
        import numpy as np
        import torch
        from dicyc.modelfile import save_model
        from dicyc.nets import build_generator

        self.delayDisplay("Synthesis with a tiny untrained model")
        lib = _lib()
        arch = {"generator": "resnet", "ngf": 4, "n_blocks": 1, "upsample": "transpose", "input_nc": 1, "output_nc": 1}
        card = {
            "method": "cyclegan", "architecture": arch, "spacing": [2.0, 2.0], "slice_size": 64,
            "domains": {
                "a": {"name": "MR", "modality": "MR", "normalization": {
                    "kind": "mr-percentile", "low": 10.0, "high": 300.0, "percentiles": [0.5, 99.5]}},
                "b": {"name": "CT", "modality": "CT", "normalization": {
                    "kind": "ct-window", "low": -1024.0, "high": 2000.0}},
            },
            "training": {"iterations_done": 0, "seed": 0},
        }
        folder = tempfile.mkdtemp(prefix="dicyc-selftest-")
        model = os.path.join(folder, "tiny.safetensors")
        torch.manual_seed(0)
        save_model(model, {"G_AB": build_generator(arch), "G_BA": build_generator(arch)}, card)
        self.assertIn("cyclegan", lib.model_summary(model)["text"])
        mr = self._phantom("MR")
        output = DiCycSynthesisLogic().synthesize(mr, model, device="cpu", precision="fp32")
        self.assertTrue(np.array_equal(lib.ijk_to_ras_of(output), lib.ijk_to_ras_of(mr)))
        self.assertEqual(output.GetDisplayNode().GetWindow(), 400.0)

        # the background path, as the Synthesize CT button runs it
        logic = DiCycSynthesisLogic().synthesis
        logic.start(slicer.mrmlScene, mr, model, device="cpu", precision="fp32")
        logic.wait(300)
        background = logic.finish(slicer.mrmlScene)
        self.assertTrue(np.allclose(lib.volume_from_node(background).array, lib.volume_from_node(output).array,
                                    atol=1e-3))
        shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Synthesis passed")

    def test_AbdominalSampleLoop(self):
        """What a user does with Sample Data → DiCyc → DiCycAbdomen: load the sample, Synthesize CT,
        a checkerboard with the views centred on the aorta and one view on the spine, and the
        metrics inside the aorta segment against the ground-truth CT."""
        import numpy as np

        import SampleData
        from dicyc.metrics import compute_metrics
        from dicyc.volume import read_volume

        lib = _lib()
        name = "DiCycAbdomen"
        self.delayDisplay("DiCyc's samples are registered with Sample Data, from local files")
        registerSampleData()
        sources = {s.sampleName: s for s in SampleData.SampleDataLogic.sampleDataSourcesByCategory("DiCyc")}
        self.assertEqual(set(sources), {"DiCycAbdomen", "DiCycHead"})
        source = sources[name]
        self.assertTrue(all(uri.startswith("file:") for uri in source.uris))
        if lib.missing_files(name) and DiCycDependencies.missingPackages("samples"):
            self.delayDisplay(f"Preparing {name} needs {', '.join(DiCycDependencies.missingPackages('samples'))}, "
                              "which is not installed: sample loop skipped")
            return

        self.delayDisplay("Loading the abdominal sample, as its Sample Data button does")
        nodes = source.customDownloader(source)
        mr, truth, segmentation = nodes["mr"], nodes["ct_truth"], nodes["segmentation"]
        self.assertEqual(set(nodes), {"mr", "ct", "ct_truth", "segmentation"})
        self.assertEqual(lib.segment_ids(segmentation), [("aorta", "aorta"), ("spine", "spine")])
        parameters = DiCycSynthesisLogic().getParameterNode()
        self.assertEqual(parameters.GetNodeReferenceID("InputVolume"), mr.GetID())
        self.assertEqual(parameters.GetNodeReferenceID("ReferenceVolume"), truth.GetID())
        self.assertEqual(parameters.GetParameter("CenterSegment"), "aorta")
        paths = lib.sample_paths(name)
        aorta = read_volume(paths["abdomen-aorta-mr"], check_finite=False)
        spine = read_volume(paths["abdomen-spine-mr"], check_finite=False)

        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("safetensors") is None:
            self.delayDisplay("PyTorch or safetensors is not installed: the sample loop stops after loading")
            return
        models = lib.bundled_models()
        self.assertTrue(models, "the extension bundles no model")
        model = ([m for m in models if "abdomen" in m.name] or models)[0]
        self.delayDisplay(f"Synthesize CT from the abdominal MR with {model.name}")
        synthetic = DiCycSynthesisLogic().synthesize(mr, str(model), device="cpu", precision="fp32")
        self.assertTrue(np.array_equal(lib.ijk_to_ras_of(synthetic), lib.ijk_to_ras_of(mr)))

        self.delayDisplay("Checkerboard of the synthetic CT over the MR, centred on the aorta, the spine in Yellow")
        board = lib.make_checkerboard_node(slicer.mrmlScene, synthetic, mr, 8)
        lib.setup_overlay(slicer.mrmlScene, board, None, opacity=0.0, layout="reveal")
        slicer.util.resetSliceViews()
        views = DiCycSynthesisLogic().centreViews(synthetic, segmentation, "aorta", "spine", zoomMm=120)
        sliceNodes = {n.GetLayoutName(): n for n in slicer.util.getNodesByClass("vtkMRMLSliceNode")}
        for mask, role in ((aorta, "center"), (spine, "also")):
            k, j, i = (int(np.floor(c.mean() + 0.5)) for c in np.nonzero(mask.array))
            expected = (mask.ijk_to_ras() @ [i, j, k, 1.0])[:3]
            shown = [view for view, info in views.items() if info["role"] == role]
            self.assertTrue(shown, f"no view goes through the {role} structure")
            for view in shown:
                matrix = sliceNodes[view].GetSliceToRAS()
                self.assertTrue(np.allclose([matrix.GetElement(r, 3) for r in range(3)], expected, atol=1e-3), view)

        self.delayDisplay("Metrics inside the aorta segment against the ground-truth CT")
        table = DiCycSynthesisLogic().roiMetrics(synthetic, truth, segmentationNode=segmentation)
        self.assertEqual([table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())], ["aorta", "spine"])
        rows = lib.roi_metrics(slicer.mrmlScene, synthetic, truth, segmentation_node=segmentation)
        direct = compute_metrics(lib.volume_from_node(synthetic).array, lib.volume_from_node(truth).array,
                                 mask=aorta.array != 0)
        self.assertTrue(np.isclose(rows[0]["mse"], direct["mse"], rtol=1e-9, atol=0))
        self.assertTrue(np.isclose(rows[0]["ssim"], direct["ssim"], rtol=1e-9, atol=1e-12))
        self.delayDisplay(f"Abdominal sample loop passed: aorta SSIM {rows[0]['ssim']:.3f}, "
                          f"PSNR {rows[0]['psnr']:.1f} dB")
