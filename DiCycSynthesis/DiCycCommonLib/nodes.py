"""Node ⇄ :class:`dicyc.volume.Volume` conversion, the one place both DiCyc modules use.

Only numpy, VTK, Slicer's MRML classes (through the ``slicer`` namespace, which both 3D Slicer
and the ``slicer-core`` wheel provide) and ``dicyc`` are imported; the scene is a parameter.

A volume node's geometry is kept exactly: :func:`volume_from_node` reads spacing, origin and
IJK-to-RAS directions as the node stores them, and :func:`update_node_from_volume` sets them
the same way, so node → Volume → node reproduces IJKToRAS bit for bit. Arrays are (k, j, i),
like ``slicer.util.arrayFromVolume``.
"""

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from dicyc.errors import DicycError
from dicyc.volume import LPS_TO_RAS, Volume


def matrix_to_numpy(matrix):
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=float)


def numpy_to_matrix(array):
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(array[i][j]))
    return m


def ijk_to_ras_of(node):
    """The node's 4x4 IJKToRAS matrix as a numpy array."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def _directions_of(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    return matrix_to_numpy(m)[:3, :3]


def volume_from_node(node, copy=True, world=False):
    """A :class:`~dicyc.volume.Volume` from a scalar volume node: array (k, j, i), geometry exact.

    The geometry is taken from what the node stores (spacing, origin and IJK-to-RAS directions)
    rather than decomposed from its 4x4 matrix, so converting back with
    :func:`update_node_from_volume` reproduces IJKToRAS bit for bit; it equals
    ``Volume.from_ijk_to_ras(array, node IJKToRAS)`` up to rounding. By default the node's own
    (local) coordinates are used — a synthesis placed under the same parent transform overlays
    it. ``world=True`` composes a linear parent transform (what the user sees), for volumes
    written to files; a node under a non-linear transform must be hardened first.
    """
    if node is None:
        raise DicycError("no volume selected.")
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise DicycError(f"volume {node.GetName()} holds no image data.")
    if image.GetNumberOfScalarComponents() != 1:
        raise DicycError(
            f"volume {node.GetName()} has {image.GetNumberOfScalarComponents()} components per voxel; "
            "DiCyc needs a scalar (greyscale) volume."
        )
    nx, ny, nz = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    if copy:
        array = array.copy()
    spacing = tuple(float(s) for s in node.GetSpacing())
    origin_ras = np.array(node.GetOrigin(), dtype=float)
    directions_ras = _directions_of(node)
    volume = Volume(array, spacing, tuple(LPS_TO_RAS @ origin_ras), LPS_TO_RAS @ directions_ras)
    if world and node.GetParentTransformNode() is not None:
        volume = Volume.from_ijk_to_ras(volume.array, node_to_world(node) @ volume.ijk_to_ras())
    return volume


def _vtk_array_for(array):
    arr = np.ascontiguousarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return numpy_support.numpy_to_vtk(arr.ravel(), deep=True)


def update_node_from_volume(node, volume):
    """Put ``volume``'s voxels and geometry into ``node`` (replacing its image data).

    Spacing, origin and IJK-to-RAS directions are set directly, so the node's IJKToRAS equals
    ``volume.ijk_to_ras()`` and a node → Volume → node round trip is exact.
    """
    arr = np.asarray(volume.array)
    nz, ny, nx = arr.shape
    image = vtk.vtkImageData()
    image.SetDimensions(nx, ny, nz)
    scalars = _vtk_array_for(arr)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    was = node.StartModify()
    node.SetSpacing(*volume.spacing)
    node.SetOrigin(*(LPS_TO_RAS @ np.asarray(volume.origin, dtype=float)))
    directions = np.eye(4)
    directions[:3, :3] = LPS_TO_RAS @ volume.direction
    node.SetIJKToRASDirectionMatrix(numpy_to_matrix(directions))
    node.SetAndObserveImageData(image)
    node.EndModify(was)
    return node


def copy_geometry(target_node, source_node):
    """Give ``target_node`` exactly ``source_node``'s IJKToRAS and parent transform."""
    target_node.CopyOrientation(source_node)
    target_node.SetAndObserveTransformNodeID(source_node.GetTransformNodeID())


def add_volume_node(scene, volume, name, node_class="vtkMRMLScalarVolumeNode"):
    """A new volume node (with a grey display node) holding ``volume``."""
    node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name) if name else "")
    update_node_from_volume(node, volume)
    ensure_display_node(scene, node)
    return node


def grey_color_node_id(scene):
    """ID of the standard grey colour table, created (as Slicer's own singleton) if missing.

    Inside 3D Slicer it always exists; a bare scene (slicer-core, tests) gets one with the same
    ID, ``vtkMRMLColorTableNodeGrey``.
    """
    node_id = "vtkMRMLColorTableNodeGrey"
    if scene.GetNodeByID(node_id) is None:
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToGrey()
        node.SetSingletonTag(node.GetTypeAsString())
        node.SetHideFromEditors(True)
        scene.AddNode(node)
        node_id = node.GetID()
    return node_id


def ensure_display_node(scene, node):
    """The node's display node, created with a grey colour table if it has none."""
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    if display is None:  # very old MRML: do it by hand
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        node.SetAndObserveDisplayNodeID(display.GetID())
    color_id = display.GetColorNodeID()
    if not color_id or scene.GetNodeByID(color_id) is None:
        display.SetAndObserveColorNodeID(grey_color_node_id(scene))
    return display


def node_to_world(node):
    """4x4 matrix from the node's coordinates to world (identity without a parent transform)."""
    transform = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise DicycError(f"{node.GetName()} is under a non-linear transform; harden the transform first.")
    m = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(m)
    return matrix_to_numpy(m)
