"""The machinery every stand-in shares: declared properties, declared signals, PythonQt-style calls.

A stand-in class declares what the real Qt/CTK/qMRML class has and nothing more:

* ``PROPERTIES``: ``{name: (type, default)}`` — read and written as attributes, like PythonQt's
  Qt properties (``label.text = "…"``). Values are type-checked;
* ``SIGNALS``: signal signatures (``"clicked(bool)"``) that ``connect`` accepts;
* ``SLOTS``: signatures a ``.ui`` ``<connection>`` may name;
* methods, as plain Python methods.

Reading or writing anything else raises ``AttributeError`` naming the class and the attribute —
unlike PythonQt, which lets a typo such as ``button.enabeld = False`` pass silently. Instances of
*user* subclasses (a module's own ``class X(qt.QObject)``) may hold attributes of their own, as
in PythonQt.

Slots are called as PythonQt calls them: with as many of the signal's arguments as the callable
accepts. An exception in a slot does not propagate into the code that emitted the signal (Qt's
event loop would print it and carry on); it is handed to :data:`slot_error_handler`, which the
harness uses to fail the test unless the test expected it.
"""

import inspect
import re
import traceback

STANDIN_MODULE_PREFIX = __name__.rsplit(".", 1)[0]


def normalize(signature):
    return re.sub(r"\s+", "", str(signature))


def signal_name(signature):
    return normalize(signature).split("(", 1)[0]


def default_slot_error_handler(exc, slot, signature):
    raise exc


#: called as handler(exception, slot, signature) when a slot raises; the harness replaces it
slot_error_handler = default_slot_error_handler


def set_slot_error_handler(handler):
    global slot_error_handler
    slot_error_handler = handler or default_slot_error_handler


def _accepted_positional(func):
    """How many positional arguments ``func`` accepts (None: any number)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def call_slot(slot, args, signature):
    """Call ``slot`` with as many of ``args`` as it accepts; route an exception to the handler."""
    accepted = _accepted_positional(slot)
    if accepted is not None:
        args = args[:accepted]
    try:
        return slot(*args)
    except Exception as exc:  # noqa: BLE001 — Qt's event loop does not propagate it either
        exc.__dicyc_traceback__ = traceback.format_exc()
        slot_error_handler(exc, slot, signature)
        return None


def _check_type(owner, name, typ, value):
    if typ is object:
        return value
    if typ is bool:
        if isinstance(value, (bool, int)):
            return bool(value)
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, float):
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(value, typ):
        return value
    raise TypeError(f"{owner}.{name} is a {getattr(typ, '__name__', typ)} property; "
                    f"got {type(value).__name__} {value!r}")


class _BoundSignal:
    """``obj.clicked`` in PythonQt's new-style syntax: ``obj.clicked.connect(slot)``."""

    def __init__(self, owner, name):
        self._owner, self._name = owner, name

    def _signature(self):
        matches = [s for s in type(self._owner).all_signals() if signal_name(s) == self._name]
        return max(matches, key=len)  # the overload with arguments, as PythonQt picks by default

    def connect(self, slot):
        return self._owner.connect(self._signature(), slot)

    def disconnect(self, slot=None):
        return self._owner.disconnect(self._signature(), slot)


class StandIn:
    """Base of every stand-in (see the module docstring)."""

    PROPERTIES = {}
    SIGNALS = ()
    SLOTS = ()
    #: the C++ class this stands in for (``className()``); default: the Python class name
    QT_CLASS = None

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_connections", [])
        object.__setattr__(self, "_signals_blocked", False)
        for name, (_typ, default) in type(self).all_properties().items():
            self._values[name] = list(default) if isinstance(default, list) else default
        for name, value in kwargs.items():
            setattr(self, name, value)

    # ----------------------------------------------------------------- declarations
    @classmethod
    def all_properties(cls):
        cache = cls.__dict__.get("_all_properties_cache")
        if cache is None:
            cache = {}
            for klass in reversed(cls.__mro__):
                cache.update(klass.__dict__.get("PROPERTIES", {}))
            setattr(cls, "_all_properties_cache", cache)
        return cache

    @classmethod
    def all_signals(cls):
        cache = cls.__dict__.get("_all_signals_cache")
        if cache is None:
            cache = set()
            for klass in cls.__mro__:
                cache.update(normalize(s) for s in klass.__dict__.get("SIGNALS", ()))
            setattr(cls, "_all_signals_cache", cache)
        return cache

    @classmethod
    def all_slots(cls):
        found = set()
        for klass in cls.__mro__:
            found.update(normalize(s) for s in klass.__dict__.get("SLOTS", ()))
        return found

    @classmethod
    def standin_class(cls):
        """The nearest class of the stand-in library (a user subclass is not one)."""
        for klass in cls.__mro__:
            if klass.__module__.startswith(STANDIN_MODULE_PREFIX):
                return klass
        return cls

    @classmethod
    def qt_class_name(cls):
        klass = cls.standin_class()
        return klass.__dict__.get("QT_CLASS") or klass.__name__

    def _is_user_subclass(self):
        return not type(self).__module__.startswith(STANDIN_MODULE_PREFIX)

    # ----------------------------------------------------------------- strict attributes
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        if any(signal_name(s) == name for s in type(self).all_signals()):
            return _BoundSignal(self, name)
        raise AttributeError(f"{type(self).qt_class_name()} (stand-in) has no property, method or signal {name!r}")

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        descriptor = getattr(type(self), name, None)
        if isinstance(descriptor, property):
            if descriptor.fset is None:
                raise AttributeError(f"{type(self).qt_class_name()}.{name} is read-only")
            descriptor.__set__(self, value)
            return
        props = type(self).all_properties()
        if name in props:
            self._set_property(name, value)
            return
        if self._is_user_subclass() and descriptor is None:
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"{type(self).qt_class_name()} (stand-in) has no property {name!r} to set")

    def _set_property(self, name, value):
        typ, _ = type(self).all_properties()[name]
        value = _check_type(type(self).qt_class_name(), name, typ, value)
        old = self._values.get(name)
        self._values[name] = value
        if old != value:
            self._property_changed(name, old, value)

    def _property_changed(self, name, old, new):
        """Hook: a property changed value (emit the matching signal)."""

    # ----------------------------------------------------------------- signals
    def connect(self, signature, slot, *rest):
        if rest or isinstance(slot, str):
            raise TypeError("only connect(signal, callable) is modelled")
        sig = normalize(signature)
        if sig not in type(self).all_signals():
            raise AttributeError(f"{type(self).qt_class_name()} (stand-in) has no signal {signature!r}; "
                                 f"it has {sorted(type(self).all_signals())}")
        if not callable(slot):
            raise TypeError(f"connect({signature!r}, …): the slot is not callable")
        self._connections.append((sig, slot))
        return True

    def disconnect(self, signature, slot=None):
        sig = normalize(signature)
        if sig not in type(self).all_signals():
            raise AttributeError(f"{type(self).qt_class_name()} (stand-in) has no signal {signature!r}")
        before = len(self._connections)
        self._connections = [(s, f) for s, f in self._connections if not (s == sig and (slot is None or f == slot))]
        return len(self._connections) != before

    def blockSignals(self, block):
        was = self._signals_blocked
        self._signals_blocked = bool(block)
        return was

    def signalsBlocked(self):
        return self._signals_blocked

    def emit_signal(self, signature, *args):
        """Deliver ``signature`` (which must be declared) to its slots, unless signals are blocked."""
        sig = normalize(signature)
        assert sig in type(self).all_signals(), f"{type(self).qt_class_name()} emits undeclared {signature}"
        if self._signals_blocked:
            return
        for connected, slot in list(self._connections):
            if connected == sig:
                call_slot(slot, args, sig)
