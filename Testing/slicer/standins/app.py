"""Stand-ins for the Slicer application around the modules: ``slicer.app``, its main window,
layout manager and module manager, ``slicer.modules`` and the module panels.

The layout manager works on the real scene's layout node and slice views (what
``slicer.util.setSliceViewerLayers``/``resetSliceViews`` reach through it); the Plots module's
logic puts a chart into a real plot view node and records it; selecting a module calls
``exit()`` on the one left and ``enter()`` on the one opened, as the module panel does.
"""

import vtk

import slicer

from . import mrml, qt


class CommandOptions:
    def __init__(self, testing):
        self.testingEnabled = testing
        self.runPythonAndExit = False


class ModuleManager(qt.QObject):
    SIGNALS = ("moduleAboutToBeUnloaded(QString)", "moduleLoaded(QString)")


class SliceWidget:
    def __init__(self, logic):
        self._logic = logic

    def mrmlSliceNode(self):
        return self._logic.GetSliceNode()

    def sliceLogic(self):
        return self._logic

    def mrmlSliceCompositeNode(self):
        return self._logic.GetSliceCompositeNode()


class LayoutManager(qt.QObject):
    SIGNALS = ("layoutChanged(int)",)

    def __init__(self, harness):
        qt.QObject.__init__(self)
        object.__setattr__(self, "_harness", harness)

    def _layout_node(self):
        return self._harness.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")

    @property
    def layout(self):
        node = self._layout_node()
        return node.GetViewArrangement() if node is not None else 0

    @layout.setter
    def layout(self, arrangement):
        self.setLayout(arrangement)

    def setLayout(self, arrangement):
        node = self._layout_node()
        if node is not None and node.GetViewArrangement() != arrangement:
            node.SetViewArrangement(int(arrangement))
            self.emit_signal("layoutChanged(int)", int(arrangement))

    def sliceViewNames(self):
        return list(self._harness.slice_logics)

    def sliceWidget(self, name):
        logic = self._harness.slice_logics.get(name)
        return SliceWidget(logic) if logic is not None else None

    def mrmlSliceLogics(self):
        collection = vtk.vtkCollection()
        for logic in self._harness.slice_logics.values():
            collection.AddItem(logic)
        return collection

    def resetSliceViews(self):
        for logic in self._harness.slice_logics.values():
            logic.FitSliceToAll()


class ModuleSelector(qt.QObject):
    SIGNALS = ("moduleSelected(QString)",)

    def __init__(self, harness):
        qt.QObject.__init__(self)
        object.__setattr__(self, "_harness", harness)

    def selectModule(self, name):
        self._harness.select(name)
        self.emit_signal("moduleSelected(QString)", name)


class MainWindow(qt.QMainWindow):
    def __init__(self, harness):
        qt.QMainWindow.__init__(self)
        self.setObjectName("qSlicerMainWindow")
        object.__setattr__(self, "_status", qt.QStatusBar(self))
        object.__setattr__(self, "_selector", ModuleSelector(harness))

    def statusBar(self):
        return self._status

    def moduleSelector(self):
        return self._selector


class SlicerApplication(qt.QObject):
    SIGNALS = ("aboutToQuit()", "startupCompleted()")

    def __init__(self, harness, testing):
        qt.QObject.__init__(self)
        object.__setattr__(self, "_harness", harness)
        object.__setattr__(self, "_options", CommandOptions(testing))
        object.__setattr__(self, "_modules", ModuleManager())
        object.__setattr__(self, "_layout_manager", LayoutManager(harness))
        object.__setattr__(self, "_main_window", MainWindow(harness))
        object.__setattr__(self, "restarts", 0)

    applicationName = "Slicer"

    def testingEnabled(self):
        return self._options.testingEnabled

    def commandOptions(self):
        return self._options

    def settings(self):
        return qt.QSettings()

    def userSettings(self):
        return qt.QSettings()

    def processEvents(self, *args):
        self._harness.process_events()

    def setOverrideCursor(self, cursor):
        qt.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        qt.QApplication.restoreOverrideCursor()

    def overrideCursor(self):
        return qt.QApplication.overrideCursor()

    def topLevelWidgets(self):
        return [self._main_window]

    def layoutManager(self):
        return self._layout_manager

    def moduleManager(self):
        return self._modules

    def keyboardModifiers(self):
        return qt.Qt.NoModifier

    def restart(self):
        object.__setattr__(self, "restarts", self.restarts + 1)


class PlotsLogic:
    """``slicer.modules.plots.logic()``: ShowChartInLayout puts the chart in a plot view."""

    def __init__(self, harness):
        self._harness = harness
        self.shown = []

    def ShowChartInLayout(self, chart):
        scene = self._harness.scene
        if chart is None or not chart.IsA("vtkMRMLPlotChartNode") or not scene.IsNodePresent(chart):
            raise AssertionError(f"ShowChartInLayout needs a plot chart node of the scene, got {chart}")
        view = scene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
        if view is None:
            view = slicer.vtkMRMLPlotViewNode()
            view.SetLayoutName("PlotView1")
            view.SetSingletonTag("PlotView1")
            scene.AddNode(view)
        view.SetPlotChartNodeID(chart.GetID())
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
        self.shown.append(chart)


class PlotsModule:
    def __init__(self, harness):
        self._logic = PlotsLogic(harness)

    def logic(self):
        return self._logic


class ModuleDescription:
    """The ``parent`` a scripted module's class fills in (qSlicerScriptedLoadableModule's properties)."""

    FIELDS = ("title", "categories", "dependencies", "contributors", "helpText", "acknowledgementText", "icon",
              "hidden", "index", "path")

    def __init__(self, path):
        object.__setattr__(self, "path", str(path))

    def __setattr__(self, name, value):
        if name not in self.FIELDS:
            raise AttributeError(f"a scripted module's parent has no property {name!r}")
        object.__setattr__(self, name, value)


class ModulePanel(mrml.qMRMLWidget):
    """qSlicerScriptedLoadableModuleWidget: the panel that holds a module's widget."""

    def __init__(self, harness, module_name):
        mrml.qMRMLWidget.__init__(self)
        object.__setattr__(self, "_harness", harness)
        object.__setattr__(self, "_module_name", module_name)
        object.__setattr__(self, "_entered", False)
        self.setLayout(qt.QVBoxLayout())

    @property
    def isEntered(self):
        return self._entered

    def reload(self):
        self._harness.recreate_widget(self._module_name)


class ModuleEntry:
    """``slicer.modules.<name>``: path, widget representation, name."""

    def __init__(self, name, path, panel):
        self.name = name
        self.path = str(path)
        self._panel = panel

    def widgetRepresentation(self):
        return self._panel


class Modules:
    """``slicer.modules``: only what was loaded (and the Plots module) is there."""

    def __init__(self, harness):
        object.__setattr__(self, "plots", PlotsModule(harness))

    def __getattr__(self, name):
        raise AttributeError(f"slicer.modules has no {name!r} (module not loaded in this test)")
