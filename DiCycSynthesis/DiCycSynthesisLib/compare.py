"""Comparison views with Slicer's own slice compositing, and giving the views back afterwards.

:func:`make_checkerboard_node` and :func:`make_error_node` build volumes on the synthetic's grid;
:func:`setup_overlay` puts two volumes into the slice views (layer reveal or side by side).
:func:`save_view_state` / :func:`restore_view_state` record and restore what a comparison changes
— layout, slice orientations, linked control — so that Compare never keeps the user's layout.
"""

import numpy as np

import slicer

from DiCycCommonLib.nodes import add_volume_node, copy_geometry, ensure_display_node, volume_from_node
from dicyc.errors import DicycError

from .display import error_color_node, set_window_level


def _on_grid(volume, grid, interpolation="linear"):
    """(``volume`` on ``grid``'s grid, boolean coverage mask or None when it already was)."""
    from dicyc.preprocess import resample_to_grid

    if volume.same_grid(grid):
        return volume, None
    if not volume.overlaps(grid):
        raise DicycError("the two volumes do not overlap in space, so there is nothing to compare.")
    moved = resample_to_grid(volume, grid, interpolation=interpolation)
    covered = resample_to_grid(
        volume.with_array(np.ones(volume.shape, np.uint8)), grid, interpolation="nearest", default_value=0
    ).array.astype(bool)
    return moved, covered


def make_checkerboard_node(scene, a_node, b_node, tiles=8, name=None, windows=None):
    """A 3-D checkerboard of A and B on A's grid (B resampled linearly where grids differ).

    Each volume is first mapped to [0, 1] with its own robust display window
    (:func:`dicyc.views.display_window`, or ``windows=((lowA, highA), (lowB, highB))``), so an
    MR and a CT are both readable; the node is float32 with window 1 / level 0.5, and overlays
    A exactly. Misalignment shows as broken edges at the tile borders.
    """
    from dicyc.views import checkerboard, display_window, to_unit

    a = volume_from_node(a_node, copy=False)
    b, _ = _on_grid(volume_from_node(b_node, copy=False), a)
    wa = windows[0] if windows else display_window(a.array)
    wb = windows[1] if windows else display_window(b.array)
    board = checkerboard(to_unit(a.array, wa), to_unit(b.array, wb), int(tiles))
    node = add_volume_node(scene, a.with_array(board), name or f"Checkerboard {a_node.GetName()} | {b_node.GetName()}")
    copy_geometry(node, a_node)
    set_window_level(scene, node, 1.0, 0.5)
    node.SetAttribute("DiCyc.Checkerboard", str(int(tiles)))
    return node


def make_error_node(scene, synthetic_node, reference_node, name=None):
    """``|synthetic − reference|`` on the synthetic grid, with the "DiCyc error" colour table.

    The reference is resampled (linear) onto the synthetic grid where the grids differ; voxels
    it does not cover get error 0 (they are unknown, not perfect, and are hidden by the
    display threshold). The window spans 0 to the 99th percentile of the error; zero error is
    transparent, so the node works as a foreground overlay on the reference or the synthetic.
    """
    from dicyc.views import error_image

    syn = volume_from_node(synthetic_node, copy=False)
    ref, covered = _on_grid(volume_from_node(reference_node, copy=False), syn)
    err = error_image(syn.array, ref.array)
    if covered is not None:
        err[~covered] = 0.0
    node = add_volume_node(scene, syn.with_array(err), name or f"Error |{synthetic_node.GetName()} - {reference_node.GetName()}|")
    copy_geometry(node, synthetic_node)
    display = ensure_display_node(scene, node)
    display.SetAndObserveColorNodeID(error_color_node(scene).GetID())
    nonzero = err[err > 0]
    top = float(np.percentile(nonzero, 99.0)) if nonzero.size else 1.0
    top = top if top > 0 else 1.0
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top)
    display.SetApplyThreshold(1)
    display.SetLowerThreshold(top * 1e-3)
    display.SetUpperThreshold(float(err.max()) + 1.0)
    node.SetAttribute("DiCyc.ErrorImage", "1")
    return node


def slice_composite_nodes(scene):
    """{layout name: slice composite node} of every slice view in the scene."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    found = {}
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        found[node.GetLayoutName() or node.GetID()] = node
    return found


def _slice_node(scene, layout_name):
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetLayoutName() == layout_name:
            return node
    return None


OVERLAY_LAYOUTS = ("reveal", "side-by-side")


def setup_overlay(scene, background_node, foreground_node, opacity=0.5, layout="reveal"):
    """Show two volumes with Slicer's slice compositing; returns {view: (bg ID, fg ID, opacity)}.

    ``layout="reveal"``: every slice view shows ``background_node`` with ``foreground_node``
    blended on top at ``opacity`` (0 = background only, 1 = foreground only) — moving the opacity
    slider reveals one layer over the other; an error image as foreground works the same way.

    ``layout="side-by-side"``: the Red view shows the background (e.g. the synthetic CT) alone,
    the Yellow view the foreground (e.g. the reference) alone, both axial, and the Green view the
    blend; the composite nodes are linked so slice position, pan and zoom move together. The
    layout switches to Slicer's side-by-side arrangement where a layout node exists.
    """
    if layout not in OVERLAY_LAYOUTS:
        raise ValueError(f"layout must be one of {OVERLAY_LAYOUTS}; got {layout!r}")
    composites = slice_composite_nodes(scene)
    if not composites:
        raise DicycError("the scene has no slice views to set up.")
    opacity = float(min(1.0, max(0.0, opacity)))
    bg_id = background_node.GetID() if background_node is not None else None
    fg_id = foreground_node.GetID() if foreground_node is not None else None
    result = {}
    for name, node in composites.items():
        was = node.StartModify()
        if layout == "reveal" or name not in ("Red", "Yellow"):
            node.SetBackgroundVolumeID(bg_id)
            node.SetForegroundVolumeID(fg_id)
            node.SetForegroundOpacity(opacity)
        elif name == "Red":
            node.SetBackgroundVolumeID(bg_id)
            node.SetForegroundVolumeID(None)
            node.SetForegroundOpacity(0.0)
        else:  # Yellow
            node.SetBackgroundVolumeID(fg_id)
            node.SetForegroundVolumeID(None)
            node.SetForegroundOpacity(0.0)
        if layout == "side-by-side":
            node.SetLinkedControl(1)
        node.EndModify(was)
        result[name] = (node.GetBackgroundVolumeID(), node.GetForegroundVolumeID(), node.GetForegroundOpacity())
    if layout == "side-by-side":
        for view in ("Red", "Yellow"):
            slice_node = _slice_node(scene, view)
            if slice_node is not None:
                slice_node.SetOrientation("Axial")
    else:
        yellow = _slice_node(scene, "Yellow")
        if yellow is not None and yellow.GetOrientation() == "Axial":
            yellow.SetOrientation("Sagittal")  # back to Slicer's default after side-by-side
    layout_node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout_node is not None:
        arrangement = (slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView if layout == "side-by-side"
                       else slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        layout_node.SetViewArrangement(arrangement)
    return result


def create_slice_views(scene, names=("Red", "Yellow", "Green")):
    """Slice nodes and composite nodes for ``names`` via vtkMRMLSliceLogic (what the layout
    manager does inside Slicer); returns {name: slice logic}. For a bare scene (tests, scripts)."""
    logics = {}
    if hasattr(slicer.vtkMRMLSliceNode, "AddDefaultSliceOrientationPresets"):
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # Axial/Sagittal/Coronal, as Slicer has
    for name in names:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.AddSliceNode(name)
        logics[name] = logic
    return logics


# ===================================================================== giving the views back
def _slice_nodes(scene):
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    found = {}
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        found[node.GetLayoutName() or node.GetID()] = node
    return found


def save_view_state(scene):
    """What a comparison may change in the views, so that :func:`restore_view_state` can give it back.

    A dict: ``layout`` (the layout node's view arrangement, or None without a layout node),
    ``slice_to_ras`` ({view: 16 numbers of its SliceToRAS matrix}, i.e. orientation and position)
    and ``linked`` ({view: linked-control flag of its composite node}).
    """
    layout_node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    state = {"layout": layout_node.GetViewArrangement() if layout_node is not None else None,
             "slice_to_ras": {}, "linked": {}}
    for name, node in _slice_nodes(scene).items():
        matrix = node.GetSliceToRAS()
        state["slice_to_ras"][name] = [matrix.GetElement(i, j) for i in range(4) for j in range(4)]
    for name, node in slice_composite_nodes(scene).items():
        state["linked"][name] = int(node.GetLinkedControl())
    return state


def restore_view_state(scene, state):
    """Give back what :func:`save_view_state` recorded: layout, slice orientations, linked control.

    A view whose orientation was changed gets its saved SliceToRAS back (orientation and the
    position it had); a view the comparison did not rotate keeps wherever the user scrolled it.
    Views that no longer exist are skipped. Returns the names of the views it changed.
    """
    if not state:
        return []
    changed = []
    for name, node in slice_composite_nodes(scene).items():
        linked = state["linked"].get(name)
        if linked is not None and int(node.GetLinkedControl()) != linked:
            node.SetLinkedControl(linked)
            changed.append(name)
    for name, node in _slice_nodes(scene).items():
        saved = state["slice_to_ras"].get(name)
        if saved is None:
            continue
        current = node.GetSliceToRAS()
        saved_rotation = np.array(saved, dtype=float).reshape(4, 4)[:3, :3]
        current_rotation = np.array([[current.GetElement(i, j) for j in range(3)] for i in range(3)])
        if not np.allclose(saved_rotation, current_rotation, atol=1e-9):
            for k, value in enumerate(saved):
                current.SetElement(k // 4, k % 4, value)
            node.UpdateMatrices()
            if name not in changed:
                changed.append(name)
    layout_node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout_node is not None and state.get("layout") is not None \
            and layout_node.GetViewArrangement() != state["layout"]:
        layout_node.SetViewArrangement(state["layout"])
    return changed
