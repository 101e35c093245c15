"""Test-only stand-ins for the Qt/application layer of 3D Slicer, so ``ChestCTMTL.py`` imports
unchanged on the slicer-core wheel and its Logic and Test class run under pytest.

What is stood in, and why only this:

* ``slicer.ScriptedLoadableModule``: the four base classes. Slicer's own file imports ``qt`` and
  ``ctk`` and builds widgets; the Logic and Test parts used here (``getParameterNode``,
  ``createParameterNode``, ``delayDisplay``) are re-implemented with the same behaviour on the
  real MRML scene.
* ``slicer.parameterNodeWrapper``: the ``@parameterNodeWrapper`` decorator with the serializers
  and validators the module uses. Values are stored exactly as Slicer stores them (parameters
  and node references of a real ``vtkMRMLScriptedModuleNode``: ``"True"``/``"False"`` for bools,
  ``str(value)`` for numbers, a reference plus an empty parameter for nodes), so a scene saved
  by one is read by the other. GUI binding (``connectGui``/``connectParametersToGui``) works on
  the widgets of Testing/qt_standin.py, with 5.8's and 5.10+'s tag behaviour (:data:`BEHAVIOUR`).
* ``qt`` and ``ctk``: empty modules, only so that ``import qt, ctk`` at the top of a scripted
  module succeeds; touching any attribute raises, so headless code that reaches for Qt fails
  loudly instead of silently doing nothing.

MRML itself (scene, nodes, logics) is never faked: it is the slicer-core wheel's.
:func:`install` is a no-op for every piece the running interpreter already has (inside Slicer).
"""
from __future__ import annotations

import importlib
import logging
import sys
import types
import typing
import unittest

__all__ = ["install", "BEHAVIOUR"]

#: Which Slicer the stand-ins imitate where versions differ: "5.8" (5.8.0/5.8.1) or "5.12"
#: (5.10 and later). Tests set it per case.
BEHAVIOUR = {"slicer": "5.12"}


# --------------------------------------------------------------------------------- qt / ctk
def _missing_gui_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = "Headless stand-in: %s is not available outside the Slicer application." % name

    def __getattr__(attr):  # PEP 562
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise AttributeError("%s.%s is not available headless (no Qt outside the Slicer application)"
                             % (name, attr))

    module.__getattr__ = __getattr__
    module.__chestctmtl_standin__ = True
    return module


# ------------------------------------------------------------------- ScriptedLoadableModule
def _scripted_loadable_module() -> types.ModuleType:
    import slicer

    module = types.ModuleType("slicer.ScriptedLoadableModule")
    module.__chestctmtl_standin__ = True

    class ScriptedLoadableModule:
        def __init__(self, parent):
            super().__init__()
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""
            if not hasattr(slicer, "selfTests"):
                slicer.selfTests = {}
            slicer.selfTests[self.moduleName] = self.runTest

        def resourcePath(self, filename):
            import os

            return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

        def runTest(self, msec=100, **kwargs):
            test_module = importlib.import_module(self.__module__)
            test_case = getattr(test_module, self.moduleName + "Test")()
            test_case.messageDelay = msec
            test_case.runTest(**kwargs)

    class ScriptedLoadableModuleWidget:
        """Slicer's base (Base/Python/slicer/ScriptedLoadableModule.py, v5.8.0 to v5.12.3):
        ``parent`` None -> a new qMRMLWidget panel and ``setup()`` at once; else the panel's
        layout. Needs Testing/qt_standin.py active (there is no Qt otherwise)."""

        def __init__(self, parent=None):
            qt = sys.modules.get("qt")
            if not getattr(qt, "__chestctmtl_qt_standin__", False):
                raise RuntimeError("module widgets need the Slicer application (Qt); "
                                   "activate Testing/qt_standin.py to run one headless")
            self.developerMode = False
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Widget"):
                self.moduleName = self.moduleName[:-6]
            self.parent = parent if parent is not None else qt.qMRMLWidget()
            if not hasattr(self.parent, "isEntered"):
                self.parent.isEntered = False
            self.layout = self.parent.layout()
            if parent is None:
                self.parent.setMRMLScene(slicer.mrmlScene)
                self.setup()
                self.parent.show()

        def resourcePath(self, filename):
            import os

            module_file = sys.modules[type(self).__module__].__file__
            return os.path.join(os.path.dirname(module_file), "Resources", filename)

        def setup(self):
            pass  # Slicer adds its Reload & Test section here in developer mode only

        def cleanup(self):
            pass

        def enter(self):
            pass

        def exit(self):
            pass

    class ScriptedLoadableModuleLogic:
        """Same parameter-node lookup as Slicer's (singleton tag + ModuleName attribute)."""

        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            scene = slicer.mrmlScene
            if self.isSingletonParameterNode:
                node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
                if node:
                    if node.GetAttribute("ModuleName") != self.moduleName:
                        node.SetAttribute("ModuleName", self.moduleName)
                    return node
            else:
                for node in self.getAllParameterNodes():
                    return node
            return scene.AddNode(self.createParameterNode())

        def getAllParameterNodes(self):
            scene = slicer.mrmlScene
            found = []
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
                node = scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
                if node.GetAttribute("ModuleName") == self.moduleName:
                    found.append(node)
            return found

        def createParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            if self.isSingletonParameterNode:
                node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.enableScreenshots = False
            self.screenshotScaleFactor = 1.0

        def delayDisplay(self, message, requestedDelay=None, msec=None):
            logging.info(message)

        def takeScreenshot(self, name, description, type=-1):
            self.delayDisplay(description)

        def runTest(self):
            logging.warning("No test is defined in " + self.__class__.__name__)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    module.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                      "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"]
    return module


# ---------------------------------------------------------------------- parameterNodeWrapper
def _parameter_node_wrapper() -> types.ModuleType:
    import slicer
    import vtk

    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.__chestctmtl_standin__ = True

    class Validator:
        def validate(self, value) -> None:  # pragma: no cover - interface
            raise NotImplementedError

    class NotNone(Validator):
        def validate(self, value):
            if value is None:
                raise ValueError("Value must not be None")

    class IsInstance(Validator):
        def __init__(self, classtype):
            self.classtype = classtype

        def validate(self, value):
            if value is not None and not isinstance(value, self.classtype):
                raise TypeError("Value must be of type %r, is %r" % (self.classtype, type(value)))

    class WithinRange(Validator):
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

        def validate(self, value):
            if not self.minimum <= value <= self.maximum:
                raise ValueError("Value must be within range [%s, %s], is %s"
                                 % (self.minimum, self.maximum, value))

    class Minimum(Validator):
        def __init__(self, minimum):
            self.minimum = minimum

        def validate(self, value):
            if value < self.minimum:
                raise ValueError("Value must be >= %s, is %s" % (self.minimum, value))

    class Maximum(Validator):
        def __init__(self, maximum):
            self.maximum = maximum

        def validate(self, value):
            if value > self.maximum:
                raise ValueError("Value must be <= %s, is %s" % (self.maximum, value))

    class Choice(Validator):
        def __init__(self, choices):
            self.choices = choices

        def validate(self, value):
            if value not in self.choices:
                raise ValueError("Value is %r, but must be one of %r" % (value, self.choices))

    class Default:
        def __init__(self, value):
            self.value = value

    # Serializers: identical string encodings to Slicer's serializers.py.
    class _Number:
        def __init__(self, type_):
            self.type = type_

        default = staticmethod(lambda: 0)

        def write(self, node, name, value):
            node.SetParameter(name, str(value))

        def read(self, node, name):
            return self.type(node.GetParameter(name))

        def isIn(self, node, name):
            return node.HasParameter(name)

    class _String(_Number):
        default = staticmethod(lambda: "")

        def read(self, node, name):
            return node.GetParameter(name)

    class _Bool(_Number):
        default = staticmethod(lambda: False)

        def write(self, node, name, value):
            node.SetParameter(name, "True" if value else "False")

        def read(self, node, name):
            return node.GetParameter(name) == "True"

    class _Node:
        default = staticmethod(lambda: None)

        def write(self, node, name, value):
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)

        def read(self, node, name):
            return node.GetNodeReference(name)

        def isIn(self, node, name):
            return node.HasParameter(name)

    def _split(annotated):
        if typing.get_origin(annotated) is typing.Annotated:
            args = typing.get_args(annotated)
            return args[0], list(args[1:])
        return annotated, []

    def _serializer(type_):
        if type_ is bool:
            return _Bool(bool), [NotNone(), IsInstance(bool)]
        if type_ in (int, float):
            return _Number(type_), [NotNone(), IsInstance((int, float) if type_ is float else int)]
        if type_ is str:
            return _String(str), [NotNone(), IsInstance(str)]
        if isinstance(type_, type) and issubclass(type_, slicer.vtkMRMLNode):
            return _Node(), [IsInstance(type_)]
        args = [a for a in typing.get_args(type_) if a is not type(None)]
        if typing.get_origin(type_) is typing.Union and len(args) == 1 and isinstance(args[0], type) \
                and issubclass(args[0], slicer.vtkMRMLNode):
            return _Node(), [IsInstance(args[0])]
        raise TypeError("the headless parameterNodeWrapper stand-in cannot serialize %r" % (type_,))

    class _Parameter:
        def __init__(self, name, serializer, validators, default):
            self.name, self.serializer, self.validators, self.default = name, serializer, validators, default

        def write(self, node, value):
            for v in self.validators:
                v.validate(value)
            self.serializer.write(node, self.name, value)

        def read(self, node):
            if not self.serializer.isIn(node, self.name):
                self.serializer.write(node, self.name, self.default)
            return self.serializer.read(node, self.name)

    # GUI binding as in Base/Python/slicer/parameterNodeWrapper/wrapper.py (v5.8.0, v5.10.0):
    # each connect makes new connectors, writes the node's values into the widgets, connects the
    # widgets' change signals, and adds a ModifiedEvent observer that is never removed;
    # disconnectGui(tag) only unhooks that tag's connectors (an unknown tag, e.g. None, nothing).
    # connectGui returns the tag from 5.10 on; on 5.8.0/5.8.1 it returns None.
    def _connector(widget, param):
        qt = sys.modules["qt"]
        choices = [v for v in param.validators if isinstance(v, Choice)]
        if isinstance(widget, qt.QAbstractButton):
            return _Connector(widget, "toggled", lambda w: bool(w.checked),
                              lambda w, v: setattr(w, "checked", bool(v)))
        if isinstance(widget, qt.ctkSliderWidget):
            return _Connector(widget, "valueChanged", lambda w: float(w.value),
                              lambda w, v: setattr(w, "value", float(v)))
        if isinstance(widget, qt.qMRMLNodeComboBox):
            return _Connector(widget, "currentNodeChanged", lambda w: w.currentNode(),
                              lambda w, v: w.setCurrentNode(v))
        if isinstance(widget, qt.QComboBox) and choices:
            values = list(choices[0].choices)
            widget.clear()  # QComboBoxToStringableConnector.__init__ refills the combo
            for c in values:
                widget.addItem(str(c))

            def write(w, v):
                if v not in values:
                    raise ValueError("Unable to find value %s in choices %s" % (v, values))
                w.currentIndex = values.index(v)

            return _Connector(widget, "currentIndexChanged", lambda w: values[w.currentIndex], write)
        raise TypeError("the stand-in has no GUI connector for %s" % type(widget).__name__)

    class _Connector:
        def __init__(self, widget, signal, read, write):
            self.widget, self._signal, self._read, self._write = widget, signal, read, write
            self._callback = None

        def onChanged(self, callback):
            if self._callback is not None:
                getattr(self.widget, self._signal).disconnect(self.changed)
            self._callback = callback
            if callback is not None:
                getattr(self.widget, self._signal).connect(self.changed)

        def changed(self, *args):
            if self._callback:
                self._callback()

        def read(self):
            return self._read(self.widget)

        def write(self, value):
            self._write(self.widget, value)

    def _update_gui(self):
        if self._updatingGUIFromParameterNode:
            return
        try:
            self._updatingGUIFromParameterNode = True
            for mapping in self._parameterGUIs.values():
                for name, connector in mapping.items():
                    connector.write(self.getValue(name))
        finally:
            self._updatingGUIFromParameterNode = False

    def _connect_parameters_to_gui(self, mapping):
        connectors = {name: _connector(widget, self.allParameters[name])
                      for name, widget in mapping.items()}
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = connectors
        for name, connector in connectors.items():
            connector.write(self.getValue(name))

            def callback(name=name, connector=connector):
                if not self._updatingGUIFromParameterNode:
                    self.setValue(name, connector.read())

            connector.onChanged(callback)
        self.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _update_gui(self))
        return tag

    def _disconnect_gui(self, tag):
        if tag in self._parameterGUIs:
            for connector in self._parameterGUIs[tag].values():
                connector.onChanged(None)
            del self._parameterGUIs[tag]

    def parameterNodeWrapper(classtype=None):
        def wrap(cls):
            hints = typing.get_type_hints(cls, include_extras=True)
            params = {}
            for name, hint in hints.items():
                type_, annotations = _split(hint)
                serializer, validators = _serializer(type_)
                defaults = [a for a in annotations if isinstance(a, Default)]
                validators += [a for a in annotations if isinstance(a, Validator)]
                if hasattr(cls, name):
                    default = getattr(cls, name)
                elif defaults:
                    default = defaults[0].value
                else:
                    default = serializer.default()
                params[name] = _Parameter(name, serializer, validators, default)

            def make_property(param):
                return property(lambda self: param.read(self.parameterNode),
                                lambda self, value: param.write(self.parameterNode, value))

            for name, param in params.items():
                setattr(cls, name, make_property(param))

            def __init__(self, parameterNode, prefix=None):
                if parameterNode is None:
                    raise ValueError("parameterNode must not be None")
                self.parameterNode = parameterNode
                self._parameterGUIs = {}
                self._nextParameterGUIsTag = 0
                self._updatingGUIFromParameterNode = False
                for param in params.values():
                    if not param.serializer.isIn(parameterNode, param.name):
                        param.write(parameterNode, param.default)

            def connectGui(self, gui):
                mapping = {}
                for widget in vars(gui).values():
                    name = widget.property(module.SlicerParameterNamePropertyName) \
                        if hasattr(widget, "property") else None
                    if name:
                        mapping[name] = widget
                tag = _connect_parameters_to_gui(self, mapping)
                return None if BEHAVIOUR["slicer"] == "5.8" else tag

            cls.__init__ = __init__
            cls.allParameters = params
            cls._is_parameter_node_wrapper = True
            cls.getValue = lambda self, name: params[name].read(self.parameterNode)
            cls.setValue = lambda self, name, value: params[name].write(self.parameterNode, value)
            cls.default = lambda self, name: Default(params[name].default)
            cls.connectGui = connectGui
            cls.connectParametersToGui = _connect_parameters_to_gui
            cls.disconnectGui = _disconnect_gui
            cls.dataType = lambda self, name: params[name]
            cls.StartModify = lambda self: self.parameterNode.StartModify()
            cls.EndModify = lambda self, was: self.parameterNode.EndModify(was)
            cls.AddObserver = lambda self, event, cb, priority=0.0: self.parameterNode.AddObserver(
                event, cb, priority)
            cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
            cls.Modified = lambda self: self.parameterNode.Modified()
            return cls

        return wrap if classtype is None else wrap(classtype)

    def isParameterNodeWrapper(obj):
        return getattr(obj, "_is_parameter_node_wrapper", False)

    for obj in (Validator, NotNone, IsInstance, WithinRange, Minimum, Maximum, Choice, Default,
                parameterNodeWrapper, isParameterNodeWrapper):
        setattr(module, obj.__name__, obj)
    module.SlicerParameterNamePropertyName = "SlicerParameterName"
    module.__all__ = [n for n in vars(module) if not n.startswith("_")]
    return module


# --------------------------------------------------------------------------------- install
def _has(module_name: str) -> bool:
    if module_name in sys.modules:
        return True
    try:
        importlib.import_module(module_name)
        return True
    except Exception:  # ImportError, or a Qt-dependent import failing outside the application
        return False


def install() -> dict:
    """Put every missing piece in place (idempotent); returns which ones are stand-ins."""
    import slicer

    installed = {}
    for name in ("qt", "ctk"):
        if not _has(name):
            sys.modules[name] = _missing_gui_module(name)
        installed[name] = bool(getattr(sys.modules[name], "__chestctmtl_standin__", False))
    for name, factory in (("ScriptedLoadableModule", _scripted_loadable_module),
                          ("parameterNodeWrapper", _parameter_node_wrapper)):
        full = "slicer." + name
        if not _has(full):
            sys.modules[full] = factory()
            setattr(slicer, name, sys.modules[full])
        installed[full] = bool(getattr(sys.modules[full], "__chestctmtl_standin__", False))
    return installed
