"""A real MRML scene without the Slicer application, on the slicer-core wheel.

Slicer's Qt application normally creates the scene, the application logic, the module logics
and the subject-hierarchy items of new nodes. Outside Slicer none of that exists, so this module
does the Qt-free part of it: the same vtkMRMLScene and module logic classes Slicer uses, wired
the way qSlicerCoreApplication wires them. It never fakes MRML; it only replaces the
application's start-up.

Inside Slicer, :func:`get_scene` returns ``slicer.mrmlScene`` and touches nothing.
"""
from __future__ import annotations

import logging
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional

import slicer
import vtk

_LOG = logging.getLogger(__name__)

#: Module logics the adapter relies on, keyed by the name Slicer registers them under.
_LOGIC_CLASSES = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("Markups", "vtkSlicerMarkupsLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Tables", "vtkSlicerTablesLogic"),
    ("Terminologies", "vtkSlicerTerminologiesModuleLogic"),
)


_SH_CLASSES = (
    slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLMarkupsNode,
    slicer.vtkMRMLTableNode, slicer.vtkMRMLModelNode,
)


def inside_slicer_application() -> bool:
    """True when running in the Slicer application (GUI or --no-main-window)."""
    return hasattr(slicer, "app") and hasattr(slicer, "mrmlScene")


class _ModuleStandIn:
    """What ``slicer.modules.<name>`` offers that core code uses: its (real) logic."""

    def __init__(self, name: str, logic) -> None:
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


class HeadlessSlicer:
    """Scene + application logic + module logics, as Slicer's core application sets them up."""

    def __init__(self, terminology_file: Optional[Path] = None) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.logics: Dict[str, object] = {}
        # Colour and terminology logics look for Slicer's share/ folder, which the wheel lacks,
        # and log an error per missing file. Those defaults are not used: our segments carry
        # their own terminology (Resources/Terminology), so silence start-up only.
        verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
        try:
            self.app_logic.GetColorLogic().SetMRMLScene(self.scene)
            for name, class_name in _LOGIC_CLASSES:
                logic = getattr(slicer, class_name)()
                logic.SetMRMLApplicationLogic(self.app_logic)
                logic.SetMRMLScene(self.scene)
                self.app_logic.SetModuleLogic(name, logic)
                self.logics[name] = logic
        finally:
            vtk.vtkLogger.SetStderrVerbosity(verbosity)
        # Reading a .mrb unpacks into the data I/O manager's cache directory (Slicer's
        # application sets this up; ReadFromMRB fails without it).
        self._cache_dir = tempfile.mkdtemp(prefix="chestctmtl-mrml-cache-")
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(self._cache_dir)
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache)
        self.scene.SetCacheManager(cache)
        self.scene.SetDataIOManager(io_manager)
        if terminology_file is not None and Path(terminology_file).is_file():
            self.logics["Terminologies"].LoadTerminologyFromFile(str(terminology_file))
        # Slicer's qSlicerSubjectHierarchyPluginHandler (Qt) puts every new data node into the
        # subject hierarchy; without Qt nobody does, so folders and .mrb files would lack items.
        self._sh_observer = self.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent,
                                                   self._on_node_added)
        # ... and removes a removed node's item from its parent; without that the item lingers
        # in its folder's children (GetItemChildren) after the node is gone.
        self._sh_remove_observer = self.scene.AddObserver(
            slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self._on_node_about_to_be_removed)
        self.modules = types.SimpleNamespace(
            **{name.lower(): _ModuleStandIn(name, logic) for name, logic in self.logics.items()})

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_added(self, caller, event, node) -> None:  # noqa: ARG002
        if node is None or self.scene.IsImporting() or self.scene.IsClosing():
            return
        if not isinstance(node, _SH_CLASSES) or node.GetHideFromEditors():
            return
        sh = self.scene.GetSubjectHierarchyNode()
        if sh is not None and sh.GetItemByDataNode(node) == 0:
            sh.CreateItem(sh.GetSceneItemID(), node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_about_to_be_removed(self, caller, event, node) -> None:  # noqa: ARG002
        if node is None or self.scene.IsClosing():
            return
        sh = self.scene.GetSubjectHierarchyNode()
        if sh is None or node is sh:
            return
        item = sh.GetItemByDataNode(node)
        if item:
            sh.RemoveItem(item, False, False)

    def close(self) -> None:
        self.scene.RemoveObserver(self._sh_observer)
        self.scene.RemoveObserver(self._sh_remove_observer)
        self.scene.Clear(True)


_HEADLESS: Optional[HeadlessSlicer] = None


def get_headless(terminology_file: Optional[Path] = None) -> HeadlessSlicer:
    """The process-wide headless application (created on first use)."""
    global _HEADLESS
    if _HEADLESS is None:
        _HEADLESS = HeadlessSlicer(terminology_file)
    return _HEADLESS


def get_scene():
    """``slicer.mrmlScene`` in Slicer, else the headless scene (also published as slicer.mrmlScene)."""
    if inside_slicer_application():
        return slicer.mrmlScene
    app = get_headless()
    # slicer.util's helpers (arrayFromVolume, saveNode, loadScene ...) look these up.
    slicer.mrmlScene = app.scene
    slicer.modules = app.modules
    return app.scene


@contextmanager
def scratch_scene():
    """A private, empty scene for building nodes only to write them to files (closed after).

    Writing a case must not disturb the user's scene, and a .mrb of a case must hold only that
    case. In Slicer the new scene gets the application's registered node classes; outside
    Slicer it is a second headless application with its own logics.
    """
    if inside_slicer_application():
        scene = slicer.vtkMRMLScene()
        slicer.mrmlScene.CopyRegisteredNodesToScene(scene)
        scene.SetDataIOManager(slicer.mrmlScene.GetDataIOManager())
        scene.SetCacheManager(slicer.mrmlScene.GetCacheManager())
        try:
            yield scene
        finally:
            scene.Clear(True)
        return
    app = HeadlessSlicer()
    try:
        yield app.scene
    finally:
        app.close()


def get_logic(name: str):
    """A module logic by Slicer's module name ('Volumes', 'Segmentations', ...)."""
    if inside_slicer_application():
        return getattr(slicer.modules, name.lower()).logic()
    return get_headless().logics[name]
