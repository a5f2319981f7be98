"""Stand-ins for the qMRML widgets (``slicer.qMRMLNodeComboBox`` …) working on a real MRML scene.

The node selectors list the real nodes of the real ``vtkMRMLScene`` they are given and follow it
(nodes added, removed, the scene closed), with the selection rules of Slicer's
``qMRMLNodeComboBox``: without ``noneEnabled`` a selector that has no current node takes the
first matching node as soon as there is one (when it gets the scene, and when a node is added) —
the behaviour that made the synthetic-volume selector pick an MR by itself — and when the current
node is removed it moves to another one; with ``noneEnabled`` it stays at "None" until something
selects a node. Property and signal names follow ``qMRMLNodeComboBox.h``.
"""

import weakref

import vtk

from . import qt

#: every node selector alive, so that the harness can take their scene observers off at the end
LIVE_SELECTORS = weakref.WeakSet()


class qMRMLWidget(qt.QWidget):
    SIGNALS = ("mrmlSceneChanged(vtkMRMLScene*)",)
    SLOTS = ("setMRMLScene(vtkMRMLScene*)",)

    def __init__(self, parent=None, **kwargs):
        qt.QWidget.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_scene", None)

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        object.__setattr__(self, "_scene", scene)
        self.emit_signal("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qt.QWidget):
    PROPERTIES = {"nodeTypes": (list, []), "showHidden": (bool, False), "showChildNodeTypes": (bool, True),
                  "hideChildNodeTypes": (list, []), "addEnabled": (bool, True), "removeEnabled": (bool, True),
                  "editEnabled": (bool, False), "renameEnabled": (bool, False), "noneEnabled": (bool, False),
                  "noneDisplay": (str, "None"), "selectNodeUponCreation": (bool, True), "baseName": (str, ""),
                  "interactionNodeSingletonTag": (str, ""), "sizeAdjustPolicy": (object, None)}
    SIGNALS = ("currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)",
               "nodeActivated(vtkMRMLNode*)", "nodeAdded(vtkMRMLNode*)", "nodeAddedByUser(vtkMRMLNode*)",
               "nodeAboutToBeRemoved(vtkMRMLNode*)", "nodeAboutToBeEdited(vtkMRMLNode*)",
               "mrmlSceneChanged(vtkMRMLScene*)")
    SLOTS = ("setMRMLScene(vtkMRMLScene*)", "setCurrentNode(vtkMRMLNode*)", "setCurrentNodeID(QString)")

    def __init__(self, parent=None, **kwargs):
        qt.QWidget.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_scene", None)
        object.__setattr__(self, "_current", None)
        object.__setattr__(self, "_observers", [])
        object.__setattr__(self, "_attributes", [])
        LIVE_SELECTORS.add(self)

    # ----------------------------------------------------------------- what it lists
    def _matches(self, node):
        if node is None or self._scene is None or not self._scene.IsNodePresent(node):
            return False
        if node.GetHideFromEditors() and not self._values["showHidden"]:
            return False
        types = self._values["nodeTypes"]
        if self._values["showChildNodeTypes"]:
            ok = any(node.IsA(t) for t in types)
        else:
            ok = node.GetClassName() in types
        ok = ok and not any(node.IsA(t) for t in self._values["hideChildNodeTypes"])
        for node_type, name, value in self._attributes:
            if node.IsA(node_type) and node.GetAttribute(name) != value:
                return False
        return ok

    def nodes(self):
        if self._scene is None:
            return []
        collection = self._scene.GetNodes()
        found = []
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if self._matches(node):
                found.append(node)
        return found

    def nodeCount(self):
        return len(self.nodes())

    def nodeFromIndex(self, index):
        nodes = self.nodes()
        return nodes[index] if 0 <= index < len(nodes) else None

    def addAttribute(self, node_type, name, value=None):
        self._attributes.append((node_type, name, value))

    # ----------------------------------------------------------------- the scene
    def release_scene(self):
        for observed, tag in self._observers:
            observed.RemoveObserver(tag)
        self._observers.clear()

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        self.release_scene()
        object.__setattr__(self, "_scene", scene)
        object.__setattr__(self, "_current", None)
        if scene is not None:
            self._observers.append((scene, scene.AddObserver(scene.NodeAddedEvent, self._on_node_added)))
            self._observers.append((scene, scene.AddObserver(scene.NodeAboutToBeRemovedEvent, self._on_node_removed)))
            self._observers.append((scene, scene.AddObserver(scene.EndCloseEvent, self._on_scene_closed)))
        self.emit_signal("mrmlSceneChanged(vtkMRMLScene*)", scene)
        self._select_default()

    def mrmlScene(self):
        return self._scene

    def _select_default(self):
        if self._current is None and not self._values["noneEnabled"]:
            nodes = self.nodes()
            if nodes:
                self._set_current(nodes[0])

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_added(self, caller, event, node):
        if self._matches(node):
            self.emit_signal("nodeAdded(vtkMRMLNode*)", node)
            self._select_default()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_removed(self, caller, event, node):
        if node is None or self._current is None or node.GetID() != self._current.GetID():
            return
        self.emit_signal("nodeAboutToBeRemoved(vtkMRMLNode*)", node)
        others = [n for n in self.nodes() if n.GetID() != node.GetID()]
        self._set_current(None if self._values["noneEnabled"] or not others else others[0])

    def _on_scene_closed(self, caller, event):
        if self._current is not None and not self._scene.IsNodePresent(self._current):
            self._set_current(None)
        self._select_default()

    # ----------------------------------------------------------------- the selection
    def currentNode(self):
        if self._current is not None and (self._scene is None or not self._scene.IsNodePresent(self._current)):
            return None
        return self._current

    @property
    def currentNodeID(self):
        node = self.currentNode()
        return node.GetID() if node is not None else ""

    @currentNodeID.setter
    def currentNodeID(self, node_id):
        self.setCurrentNodeID(node_id)

    def setCurrentNodeID(self, node_id):
        node = self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None
        if node_id and node is None:
            raise ValueError(f"{self.name}: no node {node_id!r} in the scene")
        self.setCurrentNode(node)

    def setCurrentNode(self, node):
        if node is not None and not self._matches(node):
            raise ValueError(f"{self.name} lists {self._values['nodeTypes']}; it cannot select "
                             f"{node.GetClassName()} {node.GetName()!r}")
        self._set_current(node)

    def _set_current(self, node):
        previous = self._current
        if (previous is None and node is None) or (previous is not None and node is not None
                                                   and previous.GetID() == node.GetID()):
            object.__setattr__(self, "_current", node)
            return
        object.__setattr__(self, "_current", node)
        self.emit_signal("currentNodeChanged(vtkMRMLNode*)", node)
        self.emit_signal("currentNodeChanged(bool)", node is not None)
        self.emit_signal("currentNodeIDChanged(QString)", node.GetID() if node is not None else "")

    def addNode(self, node_type=None):
        """"Create new …" from the combo box: a node of the first listed type, selected."""
        if not self._values["addEnabled"]:
            raise AssertionError(f"{self.name}: addEnabled is off")
        node = self._scene.AddNewNodeByClass(node_type or self._values["nodeTypes"][0],
                                             self._scene.GenerateUniqueName(self._values["baseName"] or "Node"))
        self.emit_signal("nodeAddedByUser(vtkMRMLNode*)", node)
        if self._values["selectNodeUponCreation"]:
            self.setCurrentNode(node)
        return node

    # what a user does
    def choose(self, node):
        """The user picks ``node`` (or "None") from the list."""
        if not self._values["enabled"]:
            raise AssertionError(f"{self.name} is disabled")
        if node is None and not self._values["noneEnabled"]:
            raise AssertionError(f"{self.name} offers no 'None' entry")
        self.setCurrentNode(node)
        if node is not None:
            self.emit_signal("nodeActivated(vtkMRMLNode*)", node)


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    SIGNALS = ("checkedNodesChanged()",)

    def __init__(self, parent=None, **kwargs):
        qMRMLNodeComboBox.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_checked", [])

    def checkedNodes(self):
        return [n for n in self.nodes() if n.GetID() in self._checked]

    def uncheckedNodes(self):
        return [n for n in self.nodes() if n.GetID() not in self._checked]

    def checkState(self, node):
        return qt.Qt.Checked if node.GetID() in self._checked else qt.Qt.Unchecked

    def setCheckState(self, node, state):
        if not self._matches(node):
            raise ValueError(f"{self.name} does not list {node.GetName()!r}")
        if state == qt.Qt.Checked and node.GetID() not in self._checked:
            self._checked.append(node.GetID())
        elif state != qt.Qt.Checked and node.GetID() in self._checked:
            self._checked.remove(node.GetID())
        else:
            return
        self.emit_signal("checkedNodesChanged()")

    def allChecked(self):
        return all(n.GetID() in self._checked for n in self.nodes())

    def noneChecked(self):
        return not self.checkedNodes()


class qMRMLTableView(qt.QTableView):
    PROPERTIES = {"transposed": (bool, False), "firstRowLocked": (bool, False), "firstColumnLocked": (bool, False)}
    SIGNALS = ("selectionChanged()",)
    SLOTS = ("setMRMLScene(vtkMRMLScene*)", "setMRMLTableNode(vtkMRMLNode*)")

    def __init__(self, parent=None, **kwargs):
        qt.QTableView.__init__(self, parent, **kwargs)
        object.__setattr__(self, "_scene", None)
        object.__setattr__(self, "_table", None)

    def setMRMLScene(self, scene):
        object.__setattr__(self, "_scene", scene)

    def mrmlScene(self):
        return self._scene

    def setMRMLTableNode(self, node):
        if node is not None and not node.IsA("vtkMRMLTableNode"):
            raise TypeError("setMRMLTableNode takes a vtkMRMLTableNode")
        object.__setattr__(self, "_table", node)

    def mrmlTableNode(self):
        return self._table


def widget_classes():
    found = {}
    for value in globals().values():
        if isinstance(value, type) and issubclass(value, qt.QObject) and value.__module__ == __name__:
            found[value.qt_class_name()] = value
    return found
