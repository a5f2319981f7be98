"""Builds a widget tree of stand-ins from a Qt Designer ``.ui`` file, strictly.

What ``QUiLoader`` would do, failing with the file and the element where a real build could not
work: an unknown widget or layout class, a property the class does not have (or a value of the
wrong kind, or an enum/flag name that does not exist), a ``<customwidget>`` that does not extend
what its stand-in extends, and a ``<connection>`` whose sender, signal, receiver or slot does not
exist. Dynamic properties (``stdset="0"``) are kept as such.
"""

import xml.etree.ElementTree as ET

from . import ctk, mrml, qt


class UiError(AssertionError):
    pass


def registry():
    classes = {}
    classes.update(qt.widget_classes())
    classes.update(ctk.widget_classes())
    classes.update(mrml.widget_classes())
    return classes


def _value(owner_cls, element, where):
    """The Python value of a ``<property>``'s value element."""
    kind = element.tag
    text = element.text or ""
    if kind in ("string", "cstring"):
        return text
    if kind == "bool":
        if text not in ("true", "false"):
            raise UiError(f"{where}: <bool> must be true or false, not {text!r}")
        return text == "true"
    if kind == "number":
        return int(text)
    if kind == "double":
        return float(text)
    if kind == "stringlist":
        return [s.text or "" for s in element.findall("string")]
    if kind in ("enum", "set"):
        value = 0
        for part in text.split("|"):
            part = part.strip()
            scope = part.rpartition("::")[0]
            owner = registry().get(scope, owner_cls) if scope and scope != "Qt" else owner_cls
            try:
                value |= qt._enum_value(owner, part)
            except AttributeError as exc:
                raise UiError(f"{where}: {exc}") from None
        return value
    if kind == "size":
        return qt.QSize(int(element.findtext("width", "0")), int(element.findtext("height", "0")))
    if kind == "rect":
        return qt.QRect(*(int(element.findtext(k, "0")) for k in ("x", "y", "width", "height")))
    raise UiError(f"{where}: property values of kind <{kind}> are not modelled")


def _set_property(obj, prop, path):
    name = prop.get("name")
    children = list(prop)
    if len(children) != 1:
        raise UiError(f"{path}: property {name} of {obj.name!r} has no single value")
    where = f"{path}: {obj.className()} {obj.name!r} property {name!r}"
    value = _value(type(obj), children[0], where)
    if prop.get("stdset") == "0":
        obj.setProperty(name, value)
        return
    properties = type(obj).all_properties()
    descriptor = getattr(type(obj), name, None)
    if name not in properties and not (isinstance(descriptor, property) and descriptor.fset is not None) \
            and name not in ("objectName", "name"):
        raise UiError(f"{where}: {obj.className()} has no such property")
    try:
        setattr(obj, name, value)
    except (TypeError, AttributeError) as exc:
        raise UiError(f"{where}: {exc}") from None


def _build_widget(element, parent, path, names):
    classes = registry()
    class_name, name = element.get("class"), element.get("name")
    cls = classes.get(class_name)
    if cls is None or not issubclass(cls, qt.QWidget):
        raise UiError(f"{path}: unknown widget class {class_name!r} (object {name!r})")
    widget = cls()
    widget.setObjectName(name or "")
    if parent is not None:
        widget.setParent(parent)
    names.append(name)
    for child in element:
        if child.tag == "property":
            _set_property(widget, child, path)
        elif child.tag == "attribute":
            continue  # layout attributes of a container's pages (tab titles …): no behaviour
        elif child.tag == "layout":
            widget.setLayout(_build_layout(child, widget, path, names))
        elif child.tag == "widget":
            _build_widget(child, widget, path, names)
        elif child.tag == "item":
            if not isinstance(widget, qt.QComboBox):
                raise UiError(f"{path}: <item> in {class_name} {name!r}")
            texts = [p for p in child.findall("property") if p.get("name") == "text"]
            widget.addItem(texts[0].findtext("string", "") if texts else "")
        elif child.tag in ("zorder", "addaction", "action"):
            continue
        else:
            raise UiError(f"{path}: unexpected <{child.tag}> in {class_name} {name!r}")
    return widget


def _build_layout(element, owner, path, names):
    classes = registry()
    class_name = element.get("class")
    cls = classes.get(class_name)
    if cls is None or not issubclass(cls, qt.QLayout):
        raise UiError(f"{path}: unknown layout class {class_name!r}")
    layout = cls()
    layout.setObjectName(element.get("name") or "")
    names.append(element.get("name"))
    for child in element:
        if child.tag == "property":
            _set_property(layout, child, path)
        elif child.tag == "item":
            for inner in child:
                if inner.tag == "widget":
                    layout.addWidget(_build_widget(inner, owner, path, names))
                elif inner.tag == "layout":
                    layout.addLayout(_build_layout(inner, owner, path, names))
                elif inner.tag == "spacer":
                    for prop in inner.findall("property"):
                        if prop.get("name") not in ("orientation", "sizeHint", "sizeType"):
                            raise UiError(f"{path}: spacer property {prop.get('name')!r}")
                    layout.addItem(qt.QSpacerItem())
                else:
                    raise UiError(f"{path}: unexpected <{inner.tag}> in a layout item")
        else:
            raise UiError(f"{path}: unexpected <{child.tag}> in layout {class_name}")
    return layout


def _check_custom_widgets(root, path):
    classes = registry()
    for custom in root.iter("customwidget"):
        class_name, extends = custom.findtext("class"), custom.findtext("extends")
        cls = classes.get(class_name)
        if cls is None:
            raise UiError(f"{path}: custom widget {class_name!r} has no stand-in")
        bases = {k.qt_class_name() for k in cls.__mro__ if hasattr(k, "qt_class_name")}
        if extends and extends not in bases:
            raise UiError(f"{path}: {class_name} is declared to extend {extends}, its stand-in extends {sorted(bases)}")


def _find(widget, name):
    if widget.name == name:
        return widget
    for child in widget.children():
        if isinstance(child, qt.QObject):
            found = _find(child, name)
            if found is not None:
                return found
    return None


def _connect(root_widget, connection, path):
    sender_name, signal = connection.findtext("sender"), connection.findtext("signal")
    receiver_name, slot = connection.findtext("receiver"), connection.findtext("slot")
    sender, receiver = _find(root_widget, sender_name), _find(root_widget, receiver_name)
    if sender is None or receiver is None:
        raise UiError(f"{path}: connection {sender_name}.{signal} -> {receiver_name}.{slot}: no such object")
    if qt.normalize(slot) not in type(receiver).all_slots():
        raise UiError(f"{path}: {receiver.className()} {receiver_name!r} has no slot {slot}")
    method = getattr(receiver, slot.split("(")[0])
    try:
        sender.connect(signal, method)
    except AttributeError as exc:
        raise UiError(f"{path}: connection from {sender_name!r}: {exc}") from None


def load_ui(path, parent=None):
    """The top-level widget of the ``.ui`` file ``path``, built from stand-ins."""
    root = ET.parse(path).getroot()
    if root.tag != "ui":
        raise UiError(f"{path}: not a Qt Designer file")
    _check_custom_widgets(root, path)
    top = root.find("widget")
    names = []
    widget = _build_widget(top, parent, path, names)
    connections = root.find("connections")
    for connection in connections if connections is not None else []:
        _connect(widget, connection, path)
    return widget
