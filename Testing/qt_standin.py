"""A Qt-free stand-in that *executes* a scripted module's widget: the ``qt`` module (widgets
built from the module's .ui file, signals and slots, timers fired by hand), ``slicer.app`` and
the one ``slicer.util`` function that needs real Qt (``messageBox``), whose dialogs the test
answers.

It follows what the widget code relies on in Slicer, and nothing more:

* Widgets are built by ``slicer.util.loadUI`` (the slicer-core wheel's own ``util.py``, Slicer's
  ``Base/Python/slicer/util.py``) through ``QUiLoader`` (:mod:`qt_standin_ui`), which reads
  the .ui XML: class, objectName, properties (text, checked, toolTip, minimum/maximum/value)
  and dynamic properties (``SlicerParameterName``). ``childWidgetVariables`` and
  ``findChildren`` are Slicer's own.
* Qt properties are attributes, as PythonQt exposes them (``combo.count``,
  ``table.rowCount``, ``timer.interval``); everything else is a method.
* Signals: PythonQt's two spellings, ``w.connect("clicked(bool)", slot)`` and
  ``w.clicked.connect(slot)``; a slot taking fewer arguments than the signal gets the first
  ones (PythonQt does the same); an exception escaping a slot is logged and kept in
  :attr:`App.slot_errors`, and the emit goes on, as PythonQt does. Property writes emit what Qt emits: ``checked`` ->
  ``toggled(bool)``, ``currentIndex`` -> ``currentIndexChanged(int)``, ``value`` ->
  ``valueChanged``, ``setCurrentNode`` -> ``currentNodeChanged``; an unchanged value emits
  nothing; ``blockSignals`` works.
* Timers never fire by themselves: :func:`fire_timers` runs the active ones (single-shot ones
  stop first, as in Qt). ``slicer.app.processEvents()`` runs the hooks a test queued
  (:attr:`App.on_process_events`, e.g. a click that was waiting in the event queue), then the
  active timers.
* Dialogs: ``slicer.util.confirmOkCancelDisplay`` & co. run unchanged down to
  ``messageBox``, which records (text, title, buttons, icon, override-cursor depth) in
  :attr:`App.dialogs` and returns the answer the test queued in :attr:`App.answers` for a
  question (failing the test if none was queued); other boxes return Ok.

Nothing of MRML is stood in: scene, nodes and logics are the slicer-core wheel's.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import types
from typing import Callable, Dict, List

__all__ = ["activate", "fire_timers", "App"]


# ------------------------------------------------------------------------------ signals
class Signal:
    def __init__(self, owner, name: str):
        self._owner, self.name, self._slots = owner, name, []

    def connect(self, slot) -> None:
        self._slots.append(slot)

    def disconnect(self, slot=None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    @property
    def slots(self) -> list:
        return list(self._slots)

    def emit(self, *args) -> None:
        if getattr(self._owner, "_blocked", False):
            return
        for slot in list(self._slots):
            try:
                _call(slot, args)
            except Exception as e:  # PythonQt prints an exception escaping a slot and goes on
                if App.current is None:
                    raise
                App.current.slot_errors.append(e)
                logging.error("exception in slot %r", slot, exc_info=True)


def _call(slot, args):
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return slot(*args)
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return slot(*args)
    n = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return slot(*args[:n])


# ------------------------------------------------------------------------------ objects
class QObject:
    SIGNALS: tuple = ()

    def __init__(self, parent=None):
        object.__setattr__(self, "_blocked", False)
        object.__setattr__(self, "_signals", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_properties", {})
        self.name = ""
        self.objectName = ""
        if parent is not None:
            parent._children.append(self)

    def __getattr__(self, attr):
        signals = object.__getattribute__(self, "_signals")
        if attr in type(self).all_signals():
            return signals.setdefault(attr, Signal(self, attr))
        raise AttributeError("{}.{} is not in the Qt stand-in".format(type(self).__name__, attr))

    @classmethod
    def all_signals(cls) -> set:
        names = set()
        for klass in cls.__mro__:
            names.update(getattr(klass, "SIGNALS", ()))
        return names

    def connect(self, signature: str, slot) -> bool:
        getattr(self, signature.split("(")[0]).connect(slot)
        return True

    def disconnect(self, signature: str, slot=None) -> bool:
        getattr(self, signature.split("(")[0]).disconnect(slot)
        return True

    def blockSignals(self, block: bool) -> bool:
        previous = self._blocked
        object.__setattr__(self, "_blocked", bool(block))
        return previous

    def signalsBlocked(self) -> bool:
        return self._blocked

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls=None) -> list:
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value) -> None:
        self._properties[name] = value

    def className(self) -> str:
        return type(self).__name__

    def isWidgetType(self) -> bool:
        return isinstance(self, QWidget)


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.text = ""
        self._layout = None

    def setLayout(self, layout) -> None:
        self._layout = layout

    def layout(self):
        if self._layout is None:
            self._layout = QVBoxLayout(self)
        return self._layout

    def setEnabled(self, enabled) -> None:
        self.enabled = bool(enabled)

    def setVisible(self, visible) -> None:
        self.visible = bool(visible)

    def show(self) -> None:
        self.visible = True

    def setToolTip(self, text) -> None:
        self.toolTip = text


class _Layout(QObject):
    def __init__(self, parent=None):
        super().__init__(None)
        self._owner = parent

    def addWidget(self, widget, *args) -> None:
        if self._owner is not None and widget not in self._owner._children:
            self._owner._children.append(widget)


class QVBoxLayout(_Layout):
    pass


class QHBoxLayout(_Layout):
    pass


class QFormLayout(_Layout):
    pass


class _Emitting(QWidget):
    """Widgets whose property writes emit Qt's change signals."""

    EMITS: Dict[str, str] = {}

    def __setattr__(self, attr, value):
        signal = type(self).EMITS.get(attr)
        if signal is None or attr not in self.__dict__:
            object.__setattr__(self, attr, value)
            return
        old = self.__dict__[attr]
        object.__setattr__(self, attr, value)
        if old != value:
            getattr(self, signal).emit(value)


class QLabel(QWidget):
    pass


class QAbstractButton(_Emitting):
    SIGNALS = ("clicked", "toggled", "pressed", "released")
    EMITS = {"checked": "toggled"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.checkable = False
        self.checked = False

    def click(self) -> None:
        """A user's click: ignored while disabled, as in Qt."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(self.checked)

    def setChecked(self, checked) -> None:
        self.checked = bool(checked)

    def isChecked(self) -> bool:
        return self.checked


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.checkable = True


class ctkCollapsibleButton(QAbstractButton):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.checkable, self.collapsed = True, False


class QLineEdit(_Emitting):
    SIGNALS = ("textChanged", "editingFinished", "returnPressed")
    EMITS = {"text": "textChanged"}

    def type_text(self, text: str) -> None:
        """The user types (editingFinished comes only when they leave the field)."""
        self.text = text

    def finish_editing(self) -> None:
        self.editingFinished.emit()


class QProgressBar(_Emitting):
    SIGNALS = ("valueChanged",)
    EMITS = {"value": "valueChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self.value = 0, 100, 0

    def setRange(self, low, high) -> None:
        self.minimum, self.maximum = low, high


class ctkSliderWidget(_Emitting):
    SIGNALS = ("valueChanged",)
    EMITS = {"value": "valueChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self.singleStep, self.decimals, self.value = 0.0, 99.0, 1.0, 2, 0.0


class QComboBox(_Emitting):
    SIGNALS = ("currentIndexChanged", "currentTextChanged", "activated")
    EMITS = {"currentIndex": "currentIndexChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items: List[dict] = []
        self.currentIndex = -1

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentText(self) -> str:
        return self._items[self.currentIndex]["text"] if self.currentIndex >= 0 else ""

    def clear(self) -> None:
        self._items = []
        self.currentIndex = -1

    def addItem(self, text, userData=None) -> None:
        self._items.append({"text": str(text), Qt.UserRole: userData})
        if self.currentIndex < 0:
            self.currentIndex = 0

    def findText(self, text) -> int:
        return next((i for i, item in enumerate(self._items) if item["text"] == text), -1)

    def itemText(self, index) -> str:
        return self._items[index]["text"] if 0 <= index < len(self._items) else ""

    def itemData(self, index, role=None):
        role = Qt.UserRole if role is None else role
        return self._items[index].get(role) if 0 <= index < len(self._items) else None

    def setItemData(self, index, value, role=None) -> None:
        self._items[index][Qt.UserRole if role is None else role] = value


class qMRMLWidget(QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        """Like the .ui file's mrmlSceneChanged -> setMRMLScene connections, for every child."""
        self._scene = scene
        for child in self.findChildren(QWidget):
            if isinstance(child, (qMRMLWidget, qMRMLNodeComboBox)):
                child._scene = scene

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QWidget):
    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._node = None, None
        self.nodeTypes, self.noneEnabled = [], False

    def setMRMLScene(self, scene) -> None:
        self._scene = scene

    def currentNode(self):
        return self._node

    def currentNodeID(self) -> str:
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is self._node:
            return
        self._node = node
        self.currentNodeChanged.emit(node)


class QTableWidgetItem:
    def __init__(self, text=""):
        self._text, self._data, self._tooltip = str(text), {}, ""

    def text(self) -> str:
        return self._text

    def setData(self, role, value) -> None:
        self._data[role] = value

    def data(self, role):
        return self._data.get(role)

    def setToolTip(self, text) -> None:
        self._tooltip = text

    def toolTip(self) -> str:
        return self._tooltip


class _Header:
    def setStretchLastSection(self, stretch) -> None:
        self.stretchLastSection = stretch


class QTableWidget(QWidget):
    SIGNALS = ("itemSelectionChanged", "cellClicked")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._columns, self._rows, self._items, self._selected = 0, 0, {}, None
        self._header, self.headerLabels = _Header(), []

    def setColumnCount(self, n) -> None:
        self._columns = n

    @property
    def columnCount(self) -> int:  # a Q_PROPERTY: an attribute in PythonQt
        return self._columns

    def setHorizontalHeaderLabels(self, labels) -> None:
        self.headerLabels = list(labels)

    def horizontalHeader(self):
        return self._header

    def clearContents(self) -> None:
        self._items = {}

    def setRowCount(self, n) -> None:
        self._rows = n
        if self._selected is not None and self._selected >= n:
            self._selected = None
            self.itemSelectionChanged.emit()

    @property
    def rowCount(self) -> int:  # a Q_PROPERTY: an attribute in PythonQt
        return self._rows

    def setItem(self, row, col, item) -> None:
        self._items[(row, col)] = item

    def item(self, row, col):
        return self._items.get((row, col))

    def selectRow(self, row) -> None:
        if row != self._selected:
            self._selected = row
            self.itemSelectionChanged.emit()

    def clearSelection(self) -> None:
        self.selectRow(None)

    def selectedItems(self) -> list:
        if self._selected is None:
            return []
        return [self._items[(self._selected, c)] for c in range(self._columns)
                if (self._selected, c) in self._items]


# ------------------------------------------------------------------------------ timers
_TIMERS: List["QTimer"] = []


class QTimer(QObject):
    SIGNALS = ("timeout",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._interval, self._single, self._active = 0, False, False
        _TIMERS.append(self)

    def setInterval(self, msec) -> None:
        self._interval = int(msec)

    @property
    def interval(self) -> int:  # a Q_PROPERTY: an attribute in PythonQt
        return self._interval

    def setSingleShot(self, single) -> None:
        self._single = bool(single)

    def isSingleShot(self) -> bool:
        return self._single

    def start(self, msec=None) -> None:
        if msec is not None:
            self._interval = int(msec)
        self._active = True

    def stop(self) -> None:
        self._active = False

    def isActive(self) -> bool:
        return self._active

    @staticmethod
    def singleShot(msec, callback) -> None:
        timer = QTimer()
        timer._temporary = True
        timer.setSingleShot(True)
        timer.timeout.connect(callback)
        timer.start(msec)


def fire_timers() -> int:
    """One round of the event loop's timers: every active timer fires once; returns how many."""
    fired = 0
    for timer in [t for t in _TIMERS if t._active]:
        if timer._single:
            timer._active = False
        timer.timeout.emit()
        fired += 1
    _TIMERS[:] = [t for t in _TIMERS if t._active or not t.__dict__.get("_temporary")]
    return fired


# ------------------------------------------------------------------------------ namespaces
class Qt:
    UserRole = 0x0100
    ToolTipRole = 3
    DisplayRole = 0
    WaitCursor = 3


class QMessageBox:
    """The enums, and a box ``slicer.util.MessageDialog`` shows while work runs (recorded in
    :attr:`App.dialogs` with ``status=True`` when shown, ``closed=True`` when accepted)."""

    NoButton, Ok, Cancel, Yes, No = 0, 0x400, 0x400000, 0x4000, 0x10000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4

    def __init__(self, *args):
        self.entry = dict(text="", status=True, closed=False)

    def setStandardButtons(self, buttons) -> None:
        self.entry["standardButtons"] = buttons

    def setText(self, text) -> None:
        self.entry["text"] = text

    def show(self) -> None:
        self.entry["cursor_depth"] = App.current.cursor_depth
        App.current.dialogs.append(self.entry)

    def accept(self) -> None:
        self.entry["closed"] = True


class QDir:
    @staticmethod
    def homePath() -> str:
        import os

        return os.path.expanduser("~")


class QFileDialog:
    answers: List[str] = []

    @staticmethod
    def getSaveFileName(*args) -> str:
        return QFileDialog.answers.pop(0) if QFileDialog.answers else ""

    @staticmethod
    def getExistingDirectory(*args) -> str:  # QFileDialog::getExistingDirectory(parent, caption, dir)
        return QFileDialog.answers.pop(0) if QFileDialog.answers else ""


class QApplication:
    @staticmethod
    def setOverrideCursor(cursor) -> None:
        App.current.setOverrideCursor(cursor)

    @staticmethod
    def restoreOverrideCursor() -> None:
        App.current.restoreOverrideCursor()


# ------------------------------------------------------------------------------ slicer.app
class _CommandOptions:
    noMainWindow = False


class App(QObject):
    """``slicer.app`` with a main window; records dialogs and cursor changes."""

    SIGNALS = ("startupCompleted",)
    current: "App" = None

    def __init__(self):
        super().__init__()
        self.applicationName = "Slicer"
        self.main_window = QWidget()
        self.main_window.objectName = "qSlicerMainWindow"
        self.cursor_depth = 0
        self.dialogs: List[dict] = []
        self.answers: List[int] = []
        self.on_process_events: List[Callable[[], None]] = []
        self.process_events_calls = 0
        self.slot_errors: List[BaseException] = []

    def testingEnabled(self) -> bool:
        return False

    def layoutManager(self):
        """No view widgets: slicer.util's display helpers then work on the scene's slice
        composite nodes only (and skip fitting), as they do when no layout is shown."""
        return None

    def commandOptions(self):
        return _CommandOptions()

    def topLevelWidgets(self) -> list:
        return [self.main_window]

    def processEvents(self, *args) -> None:
        """Queued events first (the test's hooks), then the timers that are due (all active
        ones: the stand-in has no clock), as one pass of Qt's event loop."""
        self.process_events_calls += 1
        hooks, self.on_process_events = self.on_process_events, []
        for hook in hooks:
            hook()
        fire_timers()

    def setOverrideCursor(self, cursor) -> None:
        self.cursor_depth += 1

    def restoreOverrideCursor(self) -> None:
        self.cursor_depth -= 1

    def message_box(self, text, parent=None, **kwargs):
        """slicer.util.messageBox: record, then the test's answer (questions) or Ok."""
        entry = dict(text=text, cursor_depth=self.cursor_depth, **kwargs)
        self.dialogs.append(entry)
        if kwargs.get("icon") == QMessageBox.Question:
            if not self.answers:
                raise AssertionError("unexpected question dialog: %s" % text)
            return self.answers.pop(0)
        return QMessageBox.Ok


def _qt_module() -> types.ModuleType:
    from qt_standin_ui import LAYOUT_CLASSES, WIDGET_CLASSES, QFile, QUiLoader

    module = types.ModuleType("qt")
    module.__chestctmtl_qt_standin__ = True
    for name, obj in list(WIDGET_CLASSES.items()) + list(LAYOUT_CLASSES.items()) + [
            ("QObject", QObject), ("QAbstractButton", QAbstractButton), ("QTimer", QTimer), ("QTableWidgetItem", QTableWidgetItem),
            ("QFile", QFile), ("QUiLoader", QUiLoader), ("Qt", Qt), ("QMessageBox", QMessageBox),
            ("QDir", QDir), ("QFileDialog", QFileDialog), ("QApplication", QApplication)]:
        setattr(module, name, obj)
    return module


@contextlib.contextmanager
def activate(*modules):
    """The Qt stand-in and ``slicer.app`` for the duration of a test; ``modules`` (already
    imported scripted modules) see the stand-in ``qt`` too. Yields the :class:`App`."""
    import slicer
    import slicer.util

    qt = _qt_module()
    app = App()
    App.current = app
    saved = {name: sys.modules.get(name) for name in ("qt", "ctk")}
    saved_attrs = [(m, "qt", getattr(m, "qt", None)) for m in modules]
    had_app = hasattr(slicer, "app")
    old_box = slicer.util.messageBox
    sys.modules["qt"] = qt
    sys.modules["ctk"] = qt
    for m in modules:
        m.qt = qt
    slicer.app = app
    slicer.util.messageBox = app.message_box
    _TIMERS.clear()
    try:
        yield app
    finally:
        slicer.util.messageBox = old_box
        if not had_app:
            del slicer.app
        for m, attr, value in saved_attrs:
            setattr(m, attr, value)
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
        App.current = None
        _TIMERS.clear()


def is_active() -> bool:
    return getattr(sys.modules.get("qt"), "__chestctmtl_qt_standin__", False)
