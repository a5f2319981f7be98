"""A harness that runs the DiCyc modules' widgets on a real MRML scene, with strict Qt stand-ins.

Real Slicer cannot run here, but widget code that never runs is where bugs hide. The harness
installs stand-ins for ``qt``, ``ctk``, the qMRML widgets (``slicer.qMRMLNodeComboBox`` …),
``slicer.ScriptedLoadableModule`` and the application (``slicer.app``, ``slicer.mrmlScene``,
``slicer.modules``), loads a module's ``.py`` file as Slicer does, builds its panel from the
``.ui`` file and calls ``setup()``; ``slicer.util`` is Slicer's own (from the ``slicer-core``
wheel), so ``loadUI``, ``childWidgetVariables``, ``tryWithErrorDisplay``, the message boxes,
``setSliceViewerLayers``, ``selectModule`` and ``reloadScriptedModule`` run their real code on
top of the stand-ins. Only ``pip_install`` and ``restart`` are replaced by recorders. ``import
SampleData`` finds a stand-in that keeps registrations as Slicer's does (:mod:`.sampledata`).

Strict means: an unknown widget class, object name, property or signal fails the test (see
:mod:`.core` and :mod:`.uiloader`); a message box, file dialog or exception in a slot that the
test did not expect fails it too (:meth:`SlicerHarness.finish`).

Typical use (the ``slicer_app`` fixture)::

    widget = slicer_app.load("DiCycSynthesis")
    slicer_app.select("DiCycSynthesis")
    widget.ui.synthesizeButton.click()
    slicer_app.run_until(lambda: not widget.logic.synthesis.running)
"""

import importlib.util
import re
import sys
import time
from pathlib import Path

import slicer
import vtk

from . import app, core, ctk, mrml, qt, sampledata, scripted, uiloader

ROOT = Path(__file__).resolve().parents[3]
MODULE_DIRS = {"DiCycSynthesis": ROOT / "DiCycSynthesis", "DiCycTraining": ROOT / "DiCycTraining"}


class Dialog:
    """A message box the code showed: ``kind`` ("error", "warning", "info", "question"), ``text``,
    ``title``, ``detail``, and the button the test answered with."""

    def __init__(self, kind, text, title, detail, answer):
        self.kind, self.text, self.title, self.detail, self.answer = kind, text, title, detail, answer

    def __repr__(self):
        return f"<{self.kind} dialog {self.text[:80]!r}>"


class _Hooks(qt.Hooks):
    def __init__(self, harness):
        qt.Hooks.__init__(self)
        self.harness = harness

    def message_box(self, box):
        return self.harness._answer_message_box(box)

    def file_dialog(self, kind, caption, directory, name_filter):
        return self.harness._answer_file_dialog(kind, caption, directory, name_filter)

    def process_events(self):
        self.harness.process_events()

    def load_ui(self, path, parent):
        return uiloader.load_ui(path, parent)


class SlicerHarness:
    """See the module docstring. ``testing``: what ``slicer.app.testingEnabled()`` answers (True for
    the modules' self-tests, as under ``Slicer --testing``)."""

    def __init__(self, scene, monkeypatch, testing=False, settings=None):
        self.scene = scene
        self.monkeypatch = monkeypatch
        self.testing = testing
        self.dialogs = []  # every message box shown
        self.file_dialogs = []  # (kind, caption) of every file dialog shown
        self.slot_errors = []
        self.pip_installs = []
        self._expected_dialogs = []
        self._expected_files = []
        self._unexpected = []
        self._processing = False
        self.widgets = {}
        self.panels = {}
        self.modules = {}
        self.current = None
        self.hooks = _Hooks(self)
        self.hooks.settings.update(settings or {})
        self.slice_logics = {}
        self._install()

    # ----------------------------------------------------------------- installation
    def _install(self):
        mp = self.monkeypatch
        qt.install_hooks(self.hooks)
        mp.setitem(sys.modules, "qt", qt)
        mp.setitem(sys.modules, "ctk", ctk)
        mp.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
        mp.setattr(slicer, "ScriptedLoadableModule", scripted, raising=False)
        mp.setitem(sys.modules, "SampleData", sampledata)
        for name, cls in mrml.widget_classes().items():
            mp.setattr(slicer, name, cls, raising=False)
        self.app = app.SlicerApplication(self, self.testing)
        mp.setattr(slicer, "app", self.app, raising=False)
        mp.setattr(slicer, "mrmlScene", self.scene, raising=False)
        mp.setattr(slicer, "modules", app.Modules(self), raising=False)
        mp.setattr(slicer, "selfTests", {}, raising=False)
        mp.setattr(slicer.util, "pip_install", self._pip_install)
        core.set_slot_error_handler(self._slot_error)
        for folder in MODULE_DIRS.values():
            if str(folder) not in sys.path:
                mp.syspath_prepend(str(folder))
        self._create_views()

    def _create_views(self):
        """What Slicer's layout manager makes: the layout node with Slicer's standard layouts, the
        Red/Yellow/Green slice nodes of the four-up layout (Axial/Sagittal/Coronal), a slice logic
        (and so a composite node) for each."""
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene)
        self.layout_logic = slicer.vtkMRMLLayoutLogic()
        self.layout_logic.SetMRMLScene(self.scene)
        self.layout_logic.GetLayoutNode().SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self.app_logic = slicer.vtkMRMLApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        nodes = self.scene.GetNodesByClass("vtkMRMLSliceNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(self.scene)
            logic.SetSliceNode(node)
            self.slice_logics[node.GetLayoutName()] = logic
        collection = vtk.vtkCollection()
        for logic in self.slice_logics.values():
            collection.AddItem(logic)
        self.app_logic.SetSliceLogics(collection)

    # ----------------------------------------------------------------- modules
    def load(self, name, folder=None):
        """Load module ``name`` as Slicer does at start-up and build its widget (``setup()``).
        ``folder``: where its ``.py`` and ``Resources/`` are (default: the repository's)."""
        path = (Path(folder) if folder else MODULE_DIRS[name]) / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        self.monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        description = app.ModuleDescription(path)
        self.modules[name] = getattr(module, name)(description)
        panel = app.ModulePanel(self, name)
        panel.setMRMLScene(self.scene)
        self.panels[name] = panel
        setattr(slicer.modules, name.lower(), app.ModuleEntry(name, path, panel))
        return self.recreate_widget(name, enter=False)

    def recreate_widget(self, name, enter=True):
        """What qSlicerScriptedLoadableModuleWidget does on (re)load: a new widget from the module's
        current source, ``setup()``, ``slicer.modules.<name>Widget``; ``enter()`` if it is shown."""
        module = sys.modules[name]
        panel = self.panels[name]
        widget = getattr(module, name + "Widget")(panel)
        self.widgets[name] = widget  # before setup(): a half-built widget still gets its cleanup()
        widget.setup()
        setattr(slicer.modules, name + "Widget", widget)
        if enter and panel.isEntered:
            self._call_if_defined(widget, "enter")
        return widget

    def select(self, name):
        """The user opens module ``name`` (loading it first if needed)."""
        if name not in self.widgets:
            self.load(name)
        if self.current == name:
            return self.widgets[name]
        if self.current is not None:
            object.__setattr__(self.panels[self.current], "_entered", False)
            self._call_if_defined(self.widgets[self.current], "exit")
        self.current = name
        object.__setattr__(self.panels[name], "_entered", True)
        self._call_if_defined(self.widgets[name], "enter")
        return self.widgets[name]

    @staticmethod
    def _call_if_defined(widget, method):
        """The panel calls a Python widget's enter()/exit() only where the class defines them."""
        if callable(getattr(widget, method, None)):
            getattr(widget, method)()

    def startup_completed(self):
        """The application has finished starting (modules connect to ``startupCompleted()``)."""
        self.app.emit_signal("startupCompleted()")

    def close_application(self):
        """The user closes Slicer's main window: True if it closed (then every module is unloaded)."""
        closed = self.app.topLevelWidgets()[0].close()
        if closed:
            self.unload_all()
        return closed

    def unload_all(self):
        for name in list(self.widgets):
            self.app.moduleManager().emit_signal("moduleAboutToBeUnloaded(QString)", name)
        self.widgets.clear()

    def close_scene(self):
        """File / Close scene."""
        self.scene.Clear(0)

    # ----------------------------------------------------------------- the event loop
    def process_events(self):
        """Fire the timers (and single shots) that are due, once, as Qt's event loop would."""
        if self._processing:
            return
        self._processing = True
        try:
            now = time.monotonic()
            for timer in list(self.hooks.timers):
                timer.fire_if_due(now)
            due = [(t, f) for t, f in self.hooks.single_shots if t <= now]
            self.hooks.single_shots = [(t, f) for t, f in self.hooks.single_shots if t > now]
            for _, function in due:
                core.call_slot(function, (), "singleShot")
        finally:
            self._processing = False

    def run_until(self, condition, timeout=120.0, interval=0.05):
        """Run the event loop until ``condition()`` holds; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.process_events()
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            time.sleep(interval)

    # ----------------------------------------------------------------- dialogs
    def expect_dialog(self, kind, answer=True, match=None):
        """The next message box must be of ``kind`` (and its text match the regex ``match``);
        ``answer``: True for OK/Yes, False for Cancel/No."""
        self._expected_dialogs.append((kind, answer, match))

    def expect_file_dialog(self, kind, answer):
        """The next file dialog must be of ``kind`` ("save", "open", "directory"); it returns ``answer``."""
        self._expected_files.append((kind, str(answer) if answer else ""))

    def _answer_message_box(self, box):
        values = box._values
        buttons = values.get("standardButtons") or 0
        icon = values.get("icon")
        kind = {qt.QMessageBox.Critical: "error", qt.QMessageBox.Warning: "warning",
                qt.QMessageBox.Information: "info", qt.QMessageBox.Question: "question"}.get(icon, "message")
        text = values.get("text") or ""
        if not self._expected_dialogs:
            self._unexpected.append(f"{kind} dialog: {text}")
            raise AssertionError(f"unexpected {kind} dialog: {text!r}")
        want, answer, match = self._expected_dialogs.pop(0)
        if want != kind or (match and not re.search(match, text, re.S)):
            self._unexpected.append(f"{kind} dialog {text!r} where a {want} dialog matching {match!r} was expected")
            raise AssertionError(self._unexpected[-1])
        if buttons & qt.QMessageBox.Yes:
            button = qt.QMessageBox.Yes if answer else qt.QMessageBox.No
        elif buttons & qt.QMessageBox.Cancel:
            button = qt.QMessageBox.Ok if answer else qt.QMessageBox.Cancel
        else:
            button = qt.QMessageBox.Ok
        self.dialogs.append(Dialog(kind, text, values.get("windowTitle", ""), values.get("detailedText", ""), button))
        return button

    def _answer_file_dialog(self, kind, caption, directory, name_filter):
        self.file_dialogs.append((kind, caption))
        if not self._expected_files or self._expected_files[0][0] != kind:
            self._unexpected.append(f"{kind} file dialog {caption!r}")
            raise AssertionError(f"unexpected {kind} file dialog {caption!r}")
        return self._expected_files.pop(0)[1]

    # ----------------------------------------------------------------- recorders
    def _pip_install(self, requirements, **kwargs):
        self.pip_installs.append(requirements)

    def _slot_error(self, exc, slot, signature):
        self.slot_errors.append((signature, exc))

    def take_slot_errors(self):
        errors, self.slot_errors = self.slot_errors, []
        return errors

    @property
    def status_messages(self):
        return self.app.topLevelWidgets()[0].statusBar().messages

    # ----------------------------------------------------------------- the end
    def finish(self):
        """Unload the modules (their ``cleanup()``), then fail on anything the test did not expect:
        message boxes or file dialogs, dialogs expected but never shown, exceptions in slots, a
        wait cursor left on."""
        try:
            self.unload_all()
        finally:
            for timer in list(self.hooks.timers):
                timer.stop()
            for selector in list(mrml.LIVE_SELECTORS):
                selector.release_scene()
            core.set_slot_error_handler(None)
            qt.install_hooks(qt.Hooks())
            for logic in self.slice_logics.values():
                logic.SetMRMLScene(None)
            self.app_logic.SetMRMLScene(None)
            self.layout_logic.SetMRMLScene(None)
        problems = list(self._unexpected)
        problems += [f"expected {kind} dialog (matching {match!r}) was never shown"
                     for kind, _, match in self._expected_dialogs]
        problems += [f"expected {kind} file dialog was never shown" for kind, _ in self._expected_files]
        for signature, exc in self.slot_errors:
            problems.append(f"exception in a slot of {signature}: {exc!r}\n{getattr(exc, '__dicyc_traceback__', '')}")
        if self.hooks.cursor_stack:
            problems.append(f"{len(self.hooks.cursor_stack)} override cursor(s) left on")
        if problems:
            raise AssertionError("widget harness:\n" + "\n".join(problems))
