"""Stand-in for the ``ctk`` module: the CTK widgets the DiCyc ``.ui`` files and ``slicer.util`` use.

Property, signal and enum names follow CTK's headers (``ctkCollapsibleButton.h``,
``ctkPathLineEdit.h``, ``ctkSliderWidget.h``, ``ctkMessageBox.h``).
"""

from . import qt
from .core import StandIn


class ctkCollapsibleButton(qt.QAbstractButton):
    """A section header whose contents fold away; ``collapsed`` is the opposite of ``checked``."""

    PROPERTIES = {"collapsed": (bool, False), "collapsedHeight": (int, 10), "contentsFrameShape": (object, None),
                  "contentsFrameShadow": (object, None), "contentsLineWidth": (int, 1),
                  "contentsMidLineWidth": (int, 0), "buttonTextAlignment": (object, None),
                  "indicatorAlignment": (object, None), "flat": (bool, False)}
    SIGNALS = ("contentsCollapsed(bool)",)

    def __init__(self, text="", parent=None, **kwargs):
        qt.QAbstractButton.__init__(self, text, parent, **kwargs)
        self._values["checkable"] = True
        self._values["checked"] = True

    def _property_changed(self, name, old, new):
        if name == "collapsed":
            self._values["checked"] = not new
            self.emit_signal("toggled(bool)", not new)
            self.emit_signal("contentsCollapsed(bool)", new)
        elif name == "checked":
            self._values["collapsed"] = not new
            self.emit_signal("toggled(bool)", new)
            self.emit_signal("contentsCollapsed(bool)", not new)


class ctkPathLineEdit(qt.QWidget):
    """A path field with a browse button and a history kept under ``settingKey``."""

    # ctkPathLineEdit::Filter
    Dirs, Files, Drives, NoSymLinks, AllEntries, TypeMask = 0x001, 0x002, 0x004, 0x008, 0x007, 0x00F
    Readable, Writable, Executable, PermissionMask = 0x010, 0x020, 0x040, 0x070
    Modified, Hidden, System, AccessMask = 0x080, 0x100, 0x200, 0x3F0
    AllDirs, CaseSensitive, NoDotAndDotDot, NoDot, NoDotDot, NoFilter = 0x400, 0x800, 0x1000, 0x2000, 0x4000, -1
    # ctkPathLineEdit::SizeAdjustPolicy
    AdjustToContents, AdjustToContentsOnFirstShow, AdjustToMinimumContentsLength = 0, 1, 2
    PROPERTIES = {"label": (str, ""), "filters": (int, 0), "nameFilters": (list, []), "options": (object, None),
                  "showBrowseButton": (bool, True), "showHistoryButton": (bool, True),
                  "sizeAdjustPolicy": (object, None), "minimumContentsLength": (int, 0), "settingKey": (str, "")}
    SIGNALS = ("currentPathChanged(QString)", "validInputChanged(bool)")

    def __init__(self, parent=None, **kwargs):
        qt.QWidget.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_path", "")

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        self.setCurrentPath(path)

    def setCurrentPath(self, path):
        if not isinstance(path, str):
            raise TypeError("ctkPathLineEdit.currentPath is a string")
        if path != self._path:
            object.__setattr__(self, "_path", path)
            self.emit_signal("currentPathChanged(QString)", path)

    def _property_changed(self, name, old, new):
        if name == "settingKey" and new:
            history = qt.QSettings().value(new) or []
            if history:  # as the real widget does: the most recent entry comes back
                self.setCurrentPath(history[0])

    def addCurrentPathToHistory(self):
        key = self._values["settingKey"]
        if not key or not self._path:
            return
        settings = qt.QSettings()
        history = [p for p in (settings.value(key) or []) if p != self._path]
        settings.setValue(key, [self._path] + history[:19])

    def retrieveHistory(self):
        pass

    # what a user does
    def type_path(self, path):
        """The user types (or browses to) ``path``."""
        if not self._values["enabled"]:
            raise AssertionError("cannot type into a disabled path field")
        self.setCurrentPath(path)


class ctkSliderWidget(qt.QWidget):
    PROPERTIES = {"decimals": (int, 2), "singleStep": (float, 1.0), "pageStep": (float, 10.0),
                  "minimum": (float, 0.0), "maximum": (float, 99.0), "value": (float, 0.0), "tracking": (bool, True),
                  "prefix": (str, ""), "suffix": (str, ""), "tickInterval": (float, 0.0),
                  "spinBoxVisible": (bool, True), "popupSlider": (bool, False), "invertedAppearance": (bool, False),
                  "invertedControls": (bool, False), "synchronizeSiblings": (object, None)}
    SIGNALS = ("valueChanged(double)", "valueIsChanging(double)", "sliderMoved(double)")

    def _set_property(self, name, value):
        if name == "value" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(min(max(value, self._values["minimum"]), self._values["maximum"]))
        StandIn._set_property(self, name, value)

    def _property_changed(self, name, old, new):
        if name == "value":
            self.emit_signal("valueChanged(double)", new)

    def setValue(self, value):
        self.value = value


class ctkMessageBox(qt.QMessageBox):
    """Slicer's message box (``slicer.util.messageBox`` makes one); ``exec_`` asks the harness."""

    PROPERTIES = {"dontShowAgain": (bool, False), "dontShowAgainVisible": (bool, False),
                  "dontShowAgainSettingsKey": (str, ""), "windowTitle": (str, "")}

    def __init__(self, parent=None, **kwargs):
        qt.QMessageBox.__init__(self, None, **kwargs)


class ctkWidgetsUtils:
    @staticmethod
    def grabWidget(widget, rect=None):
        raise AssertionError("screenshots are not modelled")


def widget_classes():
    found = {}
    for value in globals().values():
        if isinstance(value, type) and issubclass(value, qt.QObject) and value.__module__ == __name__:
            found[value.qt_class_name()] = value
    return found
