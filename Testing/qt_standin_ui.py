"""The Qt stand-in's ``.ui`` loading (:mod:`qt_standin`): ``QUiLoader`` builds the widget tree
of a Qt Designer file from the stand-in's widget classes, as ``slicer.util.loadUI`` asks it to
(class, objectName, properties, dynamic properties; no layouting: geometry is not stood in)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from qt_standin import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                        QProgressBar, QPushButton, QTableWidget, QVBoxLayout, QWidget,
                        ctkCollapsibleButton, ctkSliderWidget, qMRMLNodeComboBox, qMRMLWidget)

WIDGET_CLASSES = {cls.__name__: cls for cls in (
    QWidget, QLabel, QPushButton, QCheckBox, ctkCollapsibleButton, QLineEdit, QProgressBar,
    ctkSliderWidget, QComboBox, qMRMLWidget, qMRMLNodeComboBox, QTableWidget)}
LAYOUT_CLASSES = {cls.__name__: cls for cls in (QVBoxLayout, QHBoxLayout, QFormLayout)}


def _value(prop: ET.Element):
    child = list(prop)[0]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag in ("double",):
        return float(child.text)
    if child.tag == "number":
        return int(child.text)
    if child.tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    return child.text or ""


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self) -> bool:
        import os

        return os.path.isfile(self.path)

    def open(self, mode) -> bool:
        return True


class QUiLoader:
    """Builds the widget tree of a Qt Designer file (no layouting: geometry is not stood in)."""

    def load(self, qfile):
        root = ET.parse(qfile.path).getroot().find("widget")
        return self._build(root, None)

    def _build(self, element, parent):
        cls = WIDGET_CLASSES.get(element.get("class"))
        if cls is None:
            raise RuntimeError("the Qt stand-in has no widget class %r" % element.get("class"))
        widget = cls(parent)
        widget.name = widget.objectName = element.get("name")
        for prop in element.findall("property"):
            value = _value(prop)
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), value)
            elif prop.get("name") in ("text", "toolTip", "checked", "checkable", "enabled",
                                      "minimum", "maximum", "value", "singleStep", "decimals",
                                      "nodeTypes", "noneEnabled", "collapsed"):
                setattr(widget, prop.get("name"), value)
        self._children(element, widget)
        return widget

    def _children(self, element, widget):
        for child in element:
            if child.tag == "widget":
                self._build(child, widget)
            elif child.tag == "layout":
                layout = LAYOUT_CLASSES.get(child.get("class"), QVBoxLayout)(widget)
                layout.name = child.get("name")
                widget._children.append(layout)
                for item in child.findall("item"):
                    self._children(item, widget)
            elif child.tag == "item":
                self._children(child, widget)
