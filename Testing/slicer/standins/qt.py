"""Stand-in for PythonQt's ``qt`` module: the Qt classes the DiCyc modules and ``slicer.util`` use.

Installed as ``sys.modules["qt"]`` by the harness. Each widget class declares the properties,
signals and methods of its real Qt 5 class that matter here (names as in Qt's documentation);
anything else fails (see :mod:`.core`). Behaviour is modelled where the modules rely on it:
signals fire on programmatic changes as in Qt (``setCurrentIndex`` → ``currentIndexChanged``,
``setValue`` clamps and → ``valueChanged``, radio buttons are exclusive among siblings, a
``QProgressBar`` ignores values outside its range), widgets added to a layout become children
of the layout's widget, and timers fire when the harness pumps events.

Dialogs, file dialogs, the desktop services, settings and timers go through :data:`HOOKS`,
which the harness replaces with its own recorder; without a harness every dialog fails.
"""

import os
import struct
import time

from .core import StandIn, _check_type, normalize

# ===================================================================== the hooks the harness fills in


class Hooks:
    """What a real application would do; the harness replaces this with a recorder."""

    def __init__(self):
        self.settings = {}
        self.timers = set()
        self.single_shots = []
        self.cursor_stack = []
        self.opened_urls = []

    def message_box(self, box):
        raise AssertionError(f"unexpected message box: {box._values.get('text')!r}")

    def file_dialog(self, kind, caption, directory, name_filter):
        raise AssertionError(f"unexpected file dialog ({kind}): {caption!r}")

    def process_events(self):
        pass

    def load_ui(self, path, parent):
        from .uiloader import load_ui

        return load_ui(path, parent)


HOOKS = Hooks()


def install_hooks(hooks):
    global HOOKS
    HOOKS = hooks


# ===================================================================== namespace constants
class Qt:
    DisplayRole, DecorationRole, EditRole, ToolTipRole, StatusTipRole, WhatsThisRole = 0, 1, 2, 3, 4, 5
    UserRole = 0x0100
    FastTransformation, SmoothTransformation = 0, 1
    IgnoreAspectRatio, KeepAspectRatio, KeepAspectRatioByExpanding = 0, 1, 2
    ArrowCursor, WaitCursor, BusyCursor = 0, 3, 16
    AlignLeft, AlignRight, AlignHCenter, AlignJustify = 0x1, 0x2, 0x4, 0x8
    AlignTop, AlignBottom, AlignVCenter, AlignCenter = 0x20, 0x40, 0x80, 0x84
    AlignLeading, AlignTrailing = 0x1, 0x2
    Unchecked, PartiallyChecked, Checked = 0, 1, 2
    NoModifier, ShiftModifier, ControlModifier, AltModifier = 0, 0x02000000, 0x04000000, 0x08000000
    Horizontal, Vertical = 0x1, 0x2
    NoTextInteraction, TextSelectableByMouse, TextSelectableByKeyboard = 0, 1, 2
    LinksAccessibleByMouse, LinksAccessibleByKeyboard, TextEditable = 4, 8, 16
    TextBrowserInteraction, TextEditorInteraction = 13, 19
    PlainText, RichText, AutoText, MarkdownText = 0, 1, 2, 3
    NoFocus, TabFocus, ClickFocus, StrongFocus, WheelFocus = 0, 1, 2, 11, 15


def _enum_value(owner, name):
    """``Qt::AlignCenter`` → the constant (a .ui ``<enum>``/``<set>`` entry); unknown names fail."""
    scope, _, member = name.rpartition("::")
    target = Qt if scope in ("", "Qt") else owner
    if not hasattr(target, member):
        raise AttributeError(f"{name} is not a known {scope or 'Qt'} enum value")
    return getattr(target, member)


# ===================================================================== small value types
class QSize:
    def __init__(self, width=-1, height=-1):
        self._w, self._h = int(width), int(height)

    def width(self):
        return self._w

    def height(self):
        return self._h


class QRect:
    def __init__(self, x=0, y=0, width=0, height=0):
        self._r = (int(x), int(y), int(width), int(height))

    def x(self):
        return self._r[0]

    def y(self):
        return self._r[1]

    def width(self):
        return self._r[2]

    def height(self):
        return self._r[3]


class QEvent:
    None_, Timer, MouseButtonPress, KeyPress, Show, Hide, Close = 0, 1, 2, 6, 17, 18, 19

    def __init__(self, event_type):
        self._type = int(event_type)
        self._accepted = True

    def type(self):
        return self._type

    def accept(self):
        self._accepted = True

    def ignore(self):
        self._accepted = False

    def isAccepted(self):
        return self._accepted

    def setAccepted(self, accepted):
        self._accepted = bool(accepted)


class QCloseEvent(QEvent):
    def __init__(self):
        QEvent.__init__(self, QEvent.Close)


class QUrl:
    TolerantMode, StrictMode = 0, 1

    def __init__(self, text="", mode=0):
        self._text = str(text)

    @staticmethod
    def fromLocalFile(path):
        url = QUrl("file://" + str(path))
        url._local = str(path)
        return url

    def toLocalFile(self):
        return getattr(self, "_local", self._text[len("file://"):] if self._text.startswith("file://") else "")

    def toString(self):
        return self._text

    def isLocalFile(self):
        return self._text.startswith("file://")


class QDesktopServices:
    @staticmethod
    def openUrl(url):
        if not isinstance(url, QUrl):
            raise TypeError("QDesktopServices.openUrl takes a QUrl")
        HOOKS.opened_urls.append(url)
        return True


class QIcon:
    def __init__(self, path=""):
        self._path = str(path)

    def isNull(self):
        return not self._path


def _png_size(path):
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


class QPixmap:
    """A pixmap read from a PNG file (size from its header); null when there is no such image."""

    def __init__(self, path=None, _size=None):
        self._path = str(path) if path else None
        self._size = _size if _size is not None else (_png_size(self._path) if self._path else None)

    def isNull(self):
        return self._size is None

    def width(self):
        return self._size[0] if self._size else 0

    def height(self):
        return self._size[1] if self._size else 0

    def scaledToWidth(self, width, mode=Qt.FastTransformation):
        if self.isNull():
            return QPixmap()
        w, h = self._size
        return QPixmap(self._path, _size=(int(width), max(1, round(h * int(width) / w))))


class QSizePolicy:
    Fixed, Minimum, Maximum, Preferred, MinimumExpanding, Expanding, Ignored = 0, 1, 4, 5, 3, 7, 13

    def __init__(self, horizontal=5, vertical=5):
        self._h, self._v = horizontal, vertical


class QFile:
    ReadOnly, WriteOnly, ReadWrite, Text = 1, 2, 3, 16

    def __init__(self, path):
        self._path = str(path)
        self._open = False

    def exists(self):
        return os.path.isfile(self._path)

    def open(self, mode):
        self._open = self.exists()
        return self._open

    def close(self):
        self._open = False

    def fileName(self):
        return self._path


class QIODevice:
    ReadOnly, WriteOnly, ReadWrite, Text = 1, 2, 3, 16


class QSettings:
    """Application settings: one in-memory store per harness (what QSettings() reads and writes)."""

    IniFormat, NativeFormat = 1, 0

    def __init__(self, *args):
        self._store = HOOKS.settings

    def value(self, key, default=None):
        return self._store.get(str(key), default)

    def setValue(self, key, value):
        self._store[str(key)] = value

    def contains(self, key):
        return str(key) in self._store

    def remove(self, key):
        key = str(key)
        for name in [k for k in self._store if k == key or k.startswith(key + "/")]:
            del self._store[name]

    def allKeys(self):
        return sorted(self._store)

    def sync(self):
        pass


# ===================================================================== QObject, QWidget
class QObject(StandIn):
    PROPERTIES = {"objectName": (str, "")}
    SIGNALS = ("destroyed()", "destroyed(QObject*)", "objectNameChanged(QString)")

    def __init__(self, parent=None, **kwargs):
        StandIn.__init__(self, **kwargs)
        object.__setattr__(self, "_parent", None)
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_event_filters", [])
        object.__setattr__(self, "_dynamic", {})
        object.__setattr__(self, "_deleted", False)
        if parent is not None:
            self.setParent(parent)

    @property
    def name(self):  # PythonQt's alias of objectName
        return self._values["objectName"]

    @name.setter
    def name(self, value):
        self._set_property("objectName", value)

    def setObjectName(self, name):
        self._set_property("objectName", name)

    def parent(self):
        return self._parent

    def setParent(self, parent):
        if self._parent is parent:
            return
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def children(self):
        return list(self._children)

    def className(self):
        return type(self).qt_class_name()

    def inherits(self, class_name):
        return any(getattr(k, "qt_class_name", None) and k.qt_class_name() == class_name
                   for k in type(self).__mro__ if issubclass(k, StandIn))

    def installEventFilter(self, watcher):
        if not isinstance(watcher, QObject):
            raise TypeError("installEventFilter takes a QObject")
        if watcher not in self._event_filters:
            self._event_filters.append(watcher)

    def removeEventFilter(self, watcher):
        if watcher in self._event_filters:
            self._event_filters.remove(watcher)

    def eventFilter(self, watched, event):
        return False

    def send_event(self, event):
        """Deliver ``event`` as QCoreApplication::sendEvent does: event filters first (the last
        installed first); a filter that returns True stops it."""
        for watcher in reversed(list(self._event_filters)):
            from .core import call_slot

            if call_slot(watcher.eventFilter, (self, event), "eventFilter"):
                return False
        return self.event(event)

    def event(self, event):
        return True

    def property(self, name):
        return self._values.get(name, self._dynamic.get(name))

    def setProperty(self, name, value):
        if name in type(self).all_properties():
            setattr(self, name, value)
        else:
            self._dynamic[name] = value
        return True

    def deleteLater(self):
        self._deleted = True


class QLayoutItemWrapper:
    """What ``QLayout.itemAt`` returns: ``widget()``, ``layout()`` or ``spacerItem()``."""

    def __init__(self, widget=None, layout=None, spacer=None):
        self._widget, self._layout, self._spacer = widget, layout, spacer

    def widget(self):
        return self._widget

    def layout(self):
        return self._layout

    def spacerItem(self):
        return self._spacer


class QSpacerItem:
    def __init__(self, width=0, height=0, horizontal=QSizePolicy.Minimum, vertical=QSizePolicy.Minimum):
        self._size = (width, height)


class QWidget(QObject):
    PROPERTIES = {
        "enabled": (bool, True), "toolTip": (str, ""), "statusTip": (str, ""), "whatsThis": (str, ""),
        "windowTitle": (str, ""), "styleSheet": (str, ""), "geometry": (object, None),
        "minimumSize": (object, None), "maximumSize": (object, None), "sizePolicy": (object, None),
        "sizeIncrement": (object, None), "baseSize": (object, None), "font": (object, None),
        "focusPolicy": (object, None), "contextMenuPolicy": (object, None), "layoutDirection": (object, None),
        "autoFillBackground": (bool, False), "accessibleName": (str, ""), "accessibleDescription": (str, ""),
        "minimumWidth": (int, 0), "minimumHeight": (int, 0), "maximumWidth": (int, 16777215),
        "maximumHeight": (int, 16777215), "mouseTracking": (bool, False), "toolTipDuration": (int, -1),
        "windowOpacity": (float, 1.0), "cursor": (object, None), "windowIcon": (object, None),
    }
    SIGNALS = ("customContextMenuRequested(QPoint)", "windowTitleChanged(QString)")

    def __init__(self, parent=None, **kwargs):
        QObject.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_layout", None)
        object.__setattr__(self, "_visible", True)

    # visibility: the property and its methods
    @property
    def visible(self):
        return self._visible

    @visible.setter
    def visible(self, value):
        self.setVisible(value)

    def setVisible(self, visible):
        if not isinstance(visible, (bool, int)):
            raise TypeError("setVisible takes a bool")
        self._visible = bool(visible)

    def isVisible(self):
        return self._visible

    def show(self):
        self.setVisible(True)

    def hide(self):
        self.setVisible(False)

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def isEnabled(self):
        return self._values["enabled"]

    def setToolTip(self, text):
        self.toolTip = text

    @property
    def width(self):  # PythonQt exposes QWidget::width as a read-only property
        geometry = self._values.get("geometry")
        return geometry.width() if isinstance(geometry, QRect) else 380

    @property
    def height(self):
        geometry = self._values.get("geometry")
        return geometry.height() if isinstance(geometry, QRect) else 200

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        if not isinstance(layout, QLayout):
            raise TypeError("setLayout takes a QLayout")
        object.__setattr__(self, "_layout", layout)
        layout._set_owner(self)

    def setMinimumSize(self, *size):
        self.minimumSize = size

    def setSizePolicy(self, *policy):
        self.sizePolicy = policy

    def setFocus(self):
        pass

    def update(self):
        pass

    def repaint(self):
        pass

    def adjustSize(self):
        pass

    def close(self):
        event = QCloseEvent()
        self.send_event(event)
        if event.isAccepted():
            self.hide()
        return event.isAccepted()


class QFrame(QWidget):
    NoFrame, Box, Panel, StyledPanel, HLine, VLine = 0, 1, 2, 6, 4, 5
    Plain, Raised, Sunken = 0x10, 0x20, 0x30
    PROPERTIES = {"frameShape": (object, None), "frameShadow": (object, None), "lineWidth": (int, 1),
                  "midLineWidth": (int, 0)}


class QLabel(QFrame):
    PROPERTIES = {"text": (str, ""), "textFormat": (object, None), "scaledContents": (bool, False),
                  "alignment": (object, None), "wordWrap": (bool, False), "margin": (int, 0), "indent": (int, -1),
                  "openExternalLinks": (bool, False), "textInteractionFlags": (object, None)}
    SIGNALS = ("linkActivated(QString)", "linkHovered(QString)")

    def __init__(self, text="", parent=None, **kwargs):
        if isinstance(text, QWidget):
            text, parent = "", text
        QFrame.__init__(self, parent, **kwargs)
        self.text = text
        object.__setattr__(self, "_pixmap", QPixmap())

    def setText(self, text):
        self.text = text

    def setPixmap(self, pixmap):
        if not isinstance(pixmap, QPixmap):
            raise TypeError("setPixmap takes a QPixmap")
        object.__setattr__(self, "_pixmap", pixmap)

    def pixmap(self):
        return self._pixmap

    def clear(self):
        self.text = ""
        object.__setattr__(self, "_pixmap", QPixmap())


class QGroupBox(QWidget):
    PROPERTIES = {"title": (str, ""), "alignment": (object, None), "flat": (bool, False),
                  "checkable": (bool, False), "checked": (bool, True)}
    SIGNALS = ("clicked(bool)", "toggled(bool)")


# ===================================================================== buttons
class QAbstractButton(QWidget):
    PROPERTIES = {"text": (str, ""), "icon": (object, None), "iconSize": (object, None), "shortcut": (object, None),
                  "checkable": (bool, False), "checked": (bool, False), "autoRepeat": (bool, False),
                  "autoExclusive": (bool, False), "autoRepeatDelay": (int, 300), "autoRepeatInterval": (int, 100),
                  "down": (bool, False)}
    SIGNALS = ("clicked()", "clicked(bool)", "pressed()", "released()", "toggled(bool)")

    def __init__(self, text="", parent=None, **kwargs):
        if isinstance(text, QWidget):
            text, parent = "", text
        QWidget.__init__(self, parent, **kwargs)
        self.text = text

    def _property_changed(self, name, old, new):
        if name == "checked":
            if new and self._values["autoExclusive"]:
                for sibling in self._exclusive_siblings():
                    sibling.checked = False
            self.emit_signal("toggled(bool)", new)

    def _exclusive_siblings(self):
        parent = self.parent()
        if parent is None:
            return []
        return [c for c in parent.children() if c is not self and isinstance(c, QAbstractButton)
                and c._values["autoExclusive"] and c._values["checkable"] and c._values["checked"]]

    def setText(self, text):
        self.text = text

    def setIcon(self, icon):
        self.icon = icon

    def setChecked(self, checked):
        if self._values["checkable"]:
            self.checked = bool(checked)

    def isChecked(self):
        return self._values["checked"]

    def setCheckable(self, checkable):
        self.checkable = bool(checkable)

    def toggle(self):
        self.setChecked(not self._values["checked"])

    def click(self):
        """A user's click: nothing on a disabled button; a checkable one toggles first."""
        if not self._values["enabled"] or not self.isVisible():
            return False
        self.emit_signal("pressed()")
        self.emit_signal("released()")
        if self._values["checkable"]:
            if not (self._values["autoExclusive"] and self._values["checked"]):
                self.checked = not self._values["checked"]
        self.emit_signal("clicked(bool)", self._values["checked"])
        self.emit_signal("clicked()")
        return True


class QPushButton(QAbstractButton):
    PROPERTIES = {"autoDefault": (bool, False), "default": (bool, False), "flat": (bool, False)}

    def setMenu(self, menu):
        object.__setattr__(self, "_menu", menu)


class QToolButton(QAbstractButton):
    PROPERTIES = {"popupMode": (object, None), "toolButtonStyle": (object, None), "autoRaise": (bool, False),
                  "arrowType": (object, None)}
    SIGNALS = ("triggered(QAction*)",)


class QCheckBox(QAbstractButton):
    PROPERTIES = {"tristate": (bool, False)}
    SIGNALS = ("stateChanged(int)",)

    def __init__(self, text="", parent=None, **kwargs):
        QAbstractButton.__init__(self, text, parent, **kwargs)
        self._values["checkable"] = True

    def _property_changed(self, name, old, new):
        QAbstractButton._property_changed(self, name, old, new)
        if name == "checked":
            self.emit_signal("stateChanged(int)", Qt.Checked if new else Qt.Unchecked)

    def checkState(self):
        return Qt.Checked if self._values["checked"] else Qt.Unchecked


class QRadioButton(QAbstractButton):
    def __init__(self, text="", parent=None, **kwargs):
        QAbstractButton.__init__(self, text, parent, **kwargs)
        self._values["checkable"] = True
        self._values["autoExclusive"] = True


# ===================================================================== inputs
class QComboBox(QWidget):
    NoInsert, InsertAtTop, InsertAtCurrent, InsertAtBottom, InsertAfterCurrent, InsertBeforeCurrent, \
        InsertAlphabetically = range(7)
    AdjustToContents, AdjustToContentsOnFirstShow, AdjustToMinimumContentsLength, \
        AdjustToMinimumContentsLengthWithIcon = range(4)
    PROPERTIES = {"editable": (bool, False), "maxVisibleItems": (int, 10), "maxCount": (int, 2147483647),
                  "insertPolicy": (object, None), "sizeAdjustPolicy": (object, None),
                  "minimumContentsLength": (int, 0), "iconSize": (object, None), "duplicatesEnabled": (bool, False),
                  "frame": (bool, True), "modelColumn": (int, 0), "placeholderText": (str, "")}
    SIGNALS = ("currentIndexChanged(int)", "currentIndexChanged(QString)", "currentTextChanged(QString)",
               "activated(int)", "activated(QString)", "highlighted(int)", "editTextChanged(QString)",
               "textActivated(QString)")

    def __init__(self, parent=None, **kwargs):
        QWidget.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_items", [])  # [{"text": str, roles...}]
        object.__setattr__(self, "_current", -1)
        object.__setattr__(self, "_edit_text", "")

    # read-only and notifying properties
    @property
    def count(self):
        return len(self._items)

    @property
    def currentIndex(self):
        return self._current

    @currentIndex.setter
    def currentIndex(self, index):
        self.setCurrentIndex(index)

    @property
    def currentText(self):
        if self._values["editable"]:
            return self._edit_text
        return self._items[self._current]["text"] if self._current >= 0 else ""

    @currentText.setter
    def currentText(self, text):
        self.setCurrentText(text)

    @property
    def currentData(self):
        return self.itemData(self._current) if self._current >= 0 else None

    def setCurrentIndex(self, index):
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError("QComboBox.setCurrentIndex takes an int")
        if not -1 <= index < len(self._items):
            raise IndexError(f"QComboBox index {index} out of range (count {len(self._items)})")
        if index == self._current:
            return
        object.__setattr__(self, "_current", index)
        text = self._items[index]["text"] if index >= 0 else ""
        object.__setattr__(self, "_edit_text", text)
        self.emit_signal("currentIndexChanged(int)", index)
        self.emit_signal("currentIndexChanged(QString)", text)
        self.emit_signal("currentTextChanged(QString)", text)

    def setCurrentText(self, text):
        index = self.findText(text)
        if index >= 0:
            self.setCurrentIndex(index)
        elif self._values["editable"]:
            object.__setattr__(self, "_edit_text", str(text))
            self.emit_signal("editTextChanged(QString)", str(text))
            self.emit_signal("currentTextChanged(QString)", str(text))

    def setEditText(self, text):
        if self._values["editable"]:
            object.__setattr__(self, "_edit_text", str(text))

    def addItem(self, *args):
        if args and isinstance(args[0], QIcon):
            args = args[1:]
        if not args or not isinstance(args[0], str):
            raise TypeError("QComboBox.addItem(text[, userData])")
        text = args[0]
        data = args[1] if len(args) > 1 else None
        self._items.append({"text": text, Qt.UserRole: data})
        if self._current == -1:
            self.setCurrentIndex(0)

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def insertItem(self, index, text, data=None):
        self._items.insert(index, {"text": text, Qt.UserRole: data})
        if self._current == -1:
            self.setCurrentIndex(0)
        elif index <= self._current:
            object.__setattr__(self, "_current", self._current + 1)

    def removeItem(self, index):
        if not 0 <= index < len(self._items):
            return
        del self._items[index]
        if index < self._current or self._current >= len(self._items):
            object.__setattr__(self, "_current", self._current - 1)
            self.emit_signal("currentIndexChanged(int)", self._current)
        elif index == self._current:
            self.emit_signal("currentIndexChanged(int)", self._current)

    def clear(self):
        self._items.clear()
        if self._current != -1:
            object.__setattr__(self, "_current", -1)
            object.__setattr__(self, "_edit_text", "")
            self.emit_signal("currentIndexChanged(int)", -1)
            self.emit_signal("currentIndexChanged(QString)", "")
            self.emit_signal("currentTextChanged(QString)", "")

    def findText(self, text):
        for i, item in enumerate(self._items):
            if item["text"] == text:
                return i
        return -1

    def findData(self, data, role=Qt.UserRole):
        for i, item in enumerate(self._items):
            if item.get(role) == data:
                return i
        return -1

    def itemText(self, index):
        return self._items[index]["text"] if 0 <= index < len(self._items) else ""

    def setItemText(self, index, text):
        self._items[index]["text"] = text

    def itemData(self, index, role=Qt.UserRole):
        if not 0 <= index < len(self._items):
            return None
        if role == Qt.DisplayRole:
            return self._items[index]["text"]
        return self._items[index].get(role)

    def setItemData(self, index, value, role=Qt.UserRole):
        if not 0 <= index < len(self._items):
            raise IndexError(f"QComboBox.setItemData: no item {index}")
        self._items[index][role] = value

    def showPopup(self):
        pass

    # what a user does
    def choose(self, text):
        """The user picks the item ``text`` from the list."""
        index = self.findText(text)
        if index < 0 or not self._values["enabled"]:
            raise AssertionError(f"cannot choose {text!r}: items are {[i['text'] for i in self._items]}")
        self.setCurrentIndex(index)
        self.emit_signal("activated(int)", index)


class QAbstractSpinBox(QWidget):
    UpDownArrows, PlusMinus, NoButtons = 0, 1, 2
    PROPERTIES = {"wrapping": (bool, False), "frame": (bool, True), "alignment": (object, None),
                  "readOnly": (bool, False), "buttonSymbols": (object, None), "specialValueText": (str, ""),
                  "accelerated": (bool, False), "correctionMode": (object, None), "keyboardTracking": (bool, True),
                  "showGroupSeparator": (bool, False)}
    SIGNALS = ("editingFinished()",)


class QSpinBox(QAbstractSpinBox):
    PROPERTIES = {"suffix": (str, ""), "prefix": (str, ""), "minimum": (int, 0), "maximum": (int, 99),
                  "singleStep": (int, 1), "value": (int, 0), "displayIntegerBase": (int, 10), "stepType": (object, None)}
    SIGNALS = ("valueChanged(int)", "valueChanged(QString)", "textChanged(QString)")
    _number = int

    def _set_property(self, name, value):
        if name == "value":  # type-checked first, then clamped to the range as Qt does
            value = _check_type(self.qt_class_name(), name, self._number, value)
            value = self._number(min(max(value, self._values["minimum"]), self._values["maximum"]))
        StandIn._set_property(self, name, value)
        if name in ("minimum", "maximum"):
            if self._values["minimum"] > self._values["maximum"]:
                self._values["maximum" if name == "minimum" else "minimum"] = self._values[name]
            clamped = min(max(self._values["value"], self._values["minimum"]), self._values["maximum"])
            if clamped != self._values["value"]:
                self._set_property("value", clamped)

    def _property_changed(self, name, old, new):
        if name == "value":
            self.emit_signal(f"valueChanged({'int' if self._number is int else 'double'})", new)
            self.emit_signal("valueChanged(QString)", self.text)
            self.emit_signal("textChanged(QString)", self.text)

    @property
    def text(self):
        return f"{self._values['prefix']}{self._values['value']}{self._values['suffix']}"

    @property
    def cleanText(self):
        return str(self._values["value"])

    def setValue(self, value):
        self.value = value

    def setRange(self, minimum, maximum):
        self.minimum = minimum
        self.maximum = maximum

    def setMinimum(self, minimum):
        self.minimum = minimum

    def setMaximum(self, maximum):
        self.maximum = maximum


class QDoubleSpinBox(QSpinBox):
    PROPERTIES = {"minimum": (float, 0.0), "maximum": (float, 99.99), "singleStep": (float, 1.0),
                  "value": (float, 0.0), "decimals": (int, 2)}
    SIGNALS = ("valueChanged(double)",)
    _number = float

    @classmethod
    def all_signals(cls):
        return {s for s in QSpinBox.all_signals() if s != "valueChanged(int)"} | {"valueChanged(double)"}


class QProgressBar(QWidget):
    TopToBottom, BottomToTop = 0, 1
    PROPERTIES = {"minimum": (int, 0), "maximum": (int, 100), "value": (int, -1), "alignment": (object, None),
                  "textVisible": (bool, True), "orientation": (object, None), "invertedAppearance": (bool, False),
                  "textDirection": (object, None), "format": (str, "%p%")}
    SIGNALS = ("valueChanged(int)",)

    def _set_property(self, name, value):
        if name == "value" and isinstance(value, int) and value != -1 and not (
                self._values["minimum"] <= value <= self._values["maximum"]):
            return  # Qt: a value outside the range leaves the bar as it is
        StandIn._set_property(self, name, value)

    def _property_changed(self, name, old, new):
        if name == "value":
            self.emit_signal("valueChanged(int)", new)

    def setValue(self, value):
        self.value = value

    def setRange(self, minimum, maximum):
        self._values["minimum"], self._values["maximum"] = int(minimum), max(int(minimum), int(maximum))
        if not minimum <= self._values["value"] <= maximum:
            self._values["value"] = -1

    def setMinimum(self, minimum):
        self.setRange(minimum, max(minimum, self._values["maximum"]))

    def setMaximum(self, maximum):
        self.setRange(min(self._values["minimum"], maximum), maximum)

    def setFormat(self, text):
        self.format = text

    def reset(self):
        self._values["value"] = -1

    @property
    def text(self):
        lo, hi, value = self._values["minimum"], self._values["maximum"], self._values["value"]
        if value < lo or hi == lo:
            return ""
        percent = round(100.0 * (value - lo) / (hi - lo))
        return self._values["format"].replace("%p", str(percent)).replace("%v", str(value)).replace("%m", str(hi - lo))


class QPlainTextEdit(QFrame):
    NoWrap, WidgetWidth = 0, 1
    PROPERTIES = {"tabChangesFocus": (bool, False), "documentTitle": (str, ""), "undoRedoEnabled": (bool, True),
                  "lineWrapMode": (object, None), "readOnly": (bool, False), "overwriteMode": (bool, False),
                  "tabStopWidth": (int, 80), "cursorWidth": (int, 1), "textInteractionFlags": (object, None),
                  "maximumBlockCount": (int, 0), "backgroundVisible": (bool, False), "centerOnScroll": (bool, False),
                  "placeholderText": (str, "")}
    SIGNALS = ("textChanged()", "blockCountChanged(int)", "modificationChanged(bool)")

    def __init__(self, parent=None, **kwargs):
        QFrame.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_lines", [])

    @property
    def plainText(self):
        return "\n".join(self._lines)

    @plainText.setter
    def plainText(self, text):
        self.setPlainText(text)

    def setPlainText(self, text):
        if not isinstance(text, str):
            raise TypeError("setPlainText takes a str")
        object.__setattr__(self, "_lines", text.split("\n") if text else [])
        self._trim()
        self.emit_signal("textChanged()")

    def toPlainText(self):
        return self.plainText

    def appendPlainText(self, text):
        if not isinstance(text, str):
            raise TypeError("appendPlainText takes a str")
        self._lines.extend(text.split("\n"))
        self._trim()
        self.emit_signal("textChanged()")

    def _trim(self):
        limit = self._values["maximumBlockCount"]
        if limit > 0 and len(self._lines) > limit:
            del self._lines[: len(self._lines) - limit]

    def clear(self):
        self.setPlainText("")

    def blockCount(self):
        return max(1, len(self._lines))


class QLineEdit(QWidget):
    PROPERTIES = {"text": (str, ""), "placeholderText": (str, ""), "readOnly": (bool, False),
                  "maxLength": (int, 32767), "clearButtonEnabled": (bool, False)}
    SIGNALS = ("textChanged(QString)", "textEdited(QString)", "editingFinished()", "returnPressed()")

    def _property_changed(self, name, old, new):
        if name == "text":
            self.emit_signal("textChanged(QString)", new)


class QAbstractItemView(QFrame):
    PROPERTIES = {"alternatingRowColors": (bool, False), "selectionMode": (object, None),
                  "selectionBehavior": (object, None), "editTriggers": (object, None)}


class QTableView(QAbstractItemView):
    PROPERTIES = {"showGrid": (bool, True), "sortingEnabled": (bool, False), "wordWrap": (bool, True)}


class QDialog(QWidget):
    PROPERTIES = {"modal": (bool, False), "sizeGripEnabled": (bool, False)}
    SIGNALS = ("accepted()", "rejected()", "finished(int)")
    Rejected, Accepted = 0, 1

    def exec_(self):
        return QDialog.Accepted

    def exec(self):
        return self.exec_()

    def accept(self):
        self.hide()

    def reject(self):
        self.hide()


class QMessageBox(QDialog):
    NoButton, Ok, Save, SaveAll, Open, Yes, YesToAll, No, NoToAll, Abort, Retry, Ignore, Close, Cancel = (
        0x0, 0x400, 0x800, 0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000,
        0x200000, 0x400000)
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4
    PROPERTIES = {"text": (str, ""), "icon": (object, None), "standardButtons": (object, None),
                  "detailedText": (str, ""), "informativeText": (str, ""), "textFormat": (object, None)}

    def exec_(self):
        return HOOKS.message_box(self)

    def setStandardButtons(self, buttons):
        self.standardButtons = buttons

    def setText(self, text):
        self.text = text


class QMainWindow(QWidget):
    PROPERTIES = {"iconSize": (object, None), "toolButtonStyle": (object, None), "animated": (bool, True),
                  "dockNestingEnabled": (bool, False), "unifiedTitleAndToolBarOnMac": (bool, False)}


class QStatusBar(QWidget):
    PROPERTIES = {"sizeGripEnabled": (bool, True)}
    SIGNALS = ("messageChanged(QString)",)

    def __init__(self, parent=None, **kwargs):
        QWidget.__init__(self, parent, **kwargs)
        object.__setattr__(self, "messages", [])

    def showMessage(self, message, timeout=0):
        self.messages.append(str(message))
        self.emit_signal("messageChanged(QString)", str(message))

    def currentMessage(self):
        return self.messages[-1] if self.messages else ""


# ===================================================================== layouts
class QLayout(QObject):
    SetDefaultConstraint, SetNoConstraint, SetMinimumSize, SetFixedSize, SetMaximumSize, SetMinAndMaxSize = \
        0, 1, 2, 3, 4, 5
    PROPERTIES = {"spacing": (int, 6), "margin": (int, 9), "leftMargin": (int, 9), "topMargin": (int, 9),
                  "rightMargin": (int, 9), "bottomMargin": (int, 9), "sizeConstraint": (object, None)}

    def __init__(self, parent=None, **kwargs):
        QObject.__init__(self, None, **kwargs)
        object.__setattr__(self, "_items", [])
        object.__setattr__(self, "_owner", None)
        object.__setattr__(self, "_outer", None)
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def _set_owner(self, widget):
        object.__setattr__(self, "_owner", widget)
        self.setParent(widget)
        self._adopt()

    def _owner_widget(self):
        layout = self
        while layout is not None:
            if layout._owner is not None:
                return layout._owner
            layout = layout._outer
        return None

    def _adopt(self):
        owner = self._owner_widget()
        if owner is None:
            return
        for item in self._items:
            if item.widget() is not None:
                item.widget().setParent(owner)
            elif item.layout() is not None:
                item.layout()._adopt()

    def addWidget(self, widget, *args):
        if not isinstance(widget, QWidget):
            raise TypeError(f"{self.className()}.addWidget takes a QWidget, got {type(widget).__name__}")
        self._items.append(QLayoutItemWrapper(widget=widget))
        self._adopt()

    def addLayout(self, layout, *args):
        if not isinstance(layout, QLayout):
            raise TypeError("addLayout takes a QLayout")
        object.__setattr__(layout, "_outer", self)
        self._items.append(QLayoutItemWrapper(layout=layout))
        layout.setParent(self)
        self._adopt()

    def addItem(self, item):
        if isinstance(item, QSpacerItem):
            self._items.append(QLayoutItemWrapper(spacer=item))
        elif isinstance(item, QLayoutItemWrapper):
            self._items.append(item)
        else:
            raise TypeError("addItem takes a QLayoutItem")

    def addStretch(self, stretch=0):
        self._items.append(QLayoutItemWrapper(spacer=QSpacerItem()))

    def addSpacing(self, size):
        self._items.append(QLayoutItemWrapper(spacer=QSpacerItem(size, size)))

    def count(self):
        return len(self._items)

    def itemAt(self, index):
        return self._items[index] if 0 <= index < len(self._items) else None

    def removeItem(self, item):
        if item in self._items:
            self._items.remove(item)

    def removeWidget(self, widget):
        self._items = [i for i in self._items if i.widget() is not widget]

    def setContentsMargins(self, *margins):
        pass

    def setSpacing(self, spacing):
        self.spacing = spacing

    def setMargin(self, margin):
        self.margin = margin


class QBoxLayout(QLayout):
    pass


class QVBoxLayout(QBoxLayout):
    pass


class QHBoxLayout(QBoxLayout):
    pass


class QFormLayout(QLayout):
    FieldsStayAtSizeHint, ExpandingFieldsGrow, AllNonFixedFieldsGrow = 0, 1, 2
    DontWrapRows, WrapLongRows, WrapAllRows = 0, 1, 2
    LabelRole, FieldRole, SpanningRole = 0, 1, 2
    PROPERTIES = {"fieldGrowthPolicy": (object, None), "rowWrapPolicy": (object, None),
                  "labelAlignment": (object, None), "formAlignment": (object, None),
                  "horizontalSpacing": (int, 6), "verticalSpacing": (int, 6)}

    def addRow(self, first, second=None):
        for part in (first, second):
            if part is None:
                continue
            if isinstance(part, str):
                part = QLabel(part)
            if isinstance(part, QLayout):
                self.addLayout(part)
            else:
                self.addWidget(part)

    def setWidget(self, row, role, widget):
        self.addWidget(widget)

    def setLayout(self, row, role, layout):
        self.addLayout(layout)


class QGridLayout(QLayout):
    PROPERTIES = {"horizontalSpacing": (int, 6), "verticalSpacing": (int, 6)}


# ===================================================================== timers and the application
class _SingleShot:
    """``QTimer.singleShot(ms, f)`` on the class, the ``singleShot`` property on an instance."""

    def __get__(self, obj, cls):
        if obj is None:
            return QTimer._single_shot
        return obj._values["singleShot"]

    def __set__(self, obj, value):
        obj._set_property("singleShot", value)


class QTimer(QObject):
    PROPERTIES = {"interval": (int, 0), "singleShot": (bool, False), "timerType": (object, None)}
    SIGNALS = ("timeout()",)
    singleShot = _SingleShot()

    def __init__(self, parent=None, **kwargs):
        QObject.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_due", None)

    @staticmethod
    def _single_shot(msec, function):
        if not callable(function):
            raise TypeError("QTimer.singleShot(msec, callable)")
        HOOKS.single_shots.append((time.monotonic() + msec / 1000.0, function))

    @property
    def active(self):
        return self._due is not None

    def isActive(self):
        return self._due is not None

    def setInterval(self, msec):
        self.interval = int(msec)

    def setSingleShot(self, single):
        self._set_property("singleShot", bool(single))

    def start(self, msec=None):
        if msec is not None:
            self.interval = int(msec)
        object.__setattr__(self, "_due", time.monotonic() + self._values["interval"] / 1000.0)
        HOOKS.timers.add(self)

    def stop(self):
        object.__setattr__(self, "_due", None)
        HOOKS.timers.discard(self)

    def fire_if_due(self, now):
        if self._due is None or now < self._due:
            return False
        if self._values["singleShot"]:
            self.stop()
        else:
            object.__setattr__(self, "_due", now + self._values["interval"] / 1000.0)
        self.emit_signal("timeout()")
        return True


class QCursor:
    def __init__(self, shape=Qt.ArrowCursor):
        self._shape = shape

    def shape(self):
        return self._shape


class QApplication(QObject):
    @staticmethod
    def setOverrideCursor(cursor):
        HOOKS.cursor_stack.append(cursor.shape() if isinstance(cursor, QCursor) else cursor)

    @staticmethod
    def restoreOverrideCursor():
        if not HOOKS.cursor_stack:
            raise AssertionError("restoreOverrideCursor() without a matching setOverrideCursor()")
        HOOKS.cursor_stack.pop()

    @staticmethod
    def overrideCursor():
        return QCursor(HOOKS.cursor_stack[-1]) if HOOKS.cursor_stack else None

    @staticmethod
    def processEvents(*args):
        HOOKS.process_events()

    @staticmethod
    def keyboardModifiers():
        return Qt.NoModifier


class QFileDialog(QDialog):
    ShowDirsOnly, DontResolveSymlinks, DontConfirmOverwrite = 0x1, 0x2, 0x4

    @staticmethod
    def getSaveFileName(parent=None, caption="", directory="", name_filter="", *rest):
        return HOOKS.file_dialog("save", caption, directory, name_filter)

    @staticmethod
    def getOpenFileName(parent=None, caption="", directory="", name_filter="", *rest):
        return HOOKS.file_dialog("open", caption, directory, name_filter)

    @staticmethod
    def getExistingDirectory(parent=None, caption="", directory="", options=None):
        return HOOKS.file_dialog("directory", caption, directory, "")


class QUiLoader:
    def load(self, device, parent=None):
        if not isinstance(device, QFile):
            raise TypeError("QUiLoader.load takes a QFile")
        return HOOKS.load_ui(device.fileName(), parent)


#: every widget/layout class a .ui file may name, by class name
def widget_classes():
    found = {}
    for value in globals().values():
        if isinstance(value, type) and issubclass(value, QObject):
            found[value.qt_class_name()] = value
    return found


__all__ = [name for name in dir() if name.startswith("Q") or name == "Qt"] + ["normalize"]
