"""Comparison views with Slicer's own slice compositing, and giving the views back afterwards.

:func:`make_checkerboard_node` and :func:`make_error_node` build volumes on the synthetic's grid;
:func:`setup_overlay` puts two volumes into the slice views (layer reveal or side by side).
:func:`save_view_state` / :func:`restore_view_state` record and restore what a comparison changes
— layout, slice orientations, linked control — so that Compare never keeps the user's layout.
:func:`centre_views` puts the views through a segment's centre (the aorta) and one view through a
second segment's (the spine), so both alignments are judged without hunting for slices.
"""

import numpy as np

import slicer

from DiCycCommonLib.nodes import (
    add_volume_node,
    copy_geometry,
    ensure_display_node,
    ijk_to_ras_of,
    node_to_world,
    volume_from_node,
)
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


def _by_layout(scene, class_name):
    """{layout name (or node ID where it has none): node} of every ``class_name`` node in the scene."""
    nodes = scene.GetNodesByClass(class_name)
    found = {}
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        found[node.GetLayoutName() or node.GetID()] = node
    return found


def slice_composite_nodes(scene):
    """{layout name: slice composite node} of every slice view in the scene."""
    return _by_layout(scene, "vtkMRMLSliceCompositeNode")


def _slice_nodes(scene):
    """{layout name: slice node} of every slice view in the scene."""
    return _by_layout(scene, "vtkMRMLSliceNode")


def _slice_node(scene, layout_name):
    return _slice_nodes(scene).get(layout_name)


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


# ===================================================================== centring on segments
def segment_ids(segmentation_node):
    """[(segment ID, segment name)] of a segmentation node, in its order ([] for None)."""
    if segmentation_node is None:
        return []
    segmentation = segmentation_node.GetSegmentation()
    found = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        found.append((segment_id, segmentation.GetSegment(segment_id).GetName()))
    return found


def segment_centroid(scene, segmentation_node, segment_id, volume_node):
    """World (RAS) position of a segment's centre, at the centre of a voxel of ``volume_node``.

    The segment is exported onto the volume's grid (as ROI metrics do); its centroid is rounded
    to the nearest voxel, exactly as ``dicyc compare --center-on`` picks its point, so a slice
    through it cuts the volume at a voxel centre rather than between two slices. Returns
    ``(ras, ijk)``; one sentence where the segment has no voxel inside the volume.
    """
    from .roi import segment_masks

    if segmentation_node is None or volume_node is None:
        raise DicycError("select a segmentation and a volume to centre the views on.")
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id) if segment_id else None
    if segment is None:
        raise DicycError(f"{segmentation_node.GetName()} has no segment {segment_id!r}; choose one of its segments.")
    (_, name, mask), = segment_masks(scene, segmentation_node, volume_node, [segment_id])
    if not mask.any():
        raise DicycError(f"segment {name} has no voxels inside {volume_node.GetName()}.")
    k, j, i = (int(np.floor(float(c.mean()) + 0.5)) for c in np.nonzero(mask))
    ijk_to_world = node_to_world(volume_node) @ ijk_to_ras_of(volume_node)
    return tuple(float(v) for v in (ijk_to_world @ np.array([i, j, k, 1.0]))[:3]), (i, j, k)


def _orientation_key(slice_node):
    """The slice plane's normal as a rounded, sign-free tuple (views showing the same plane match)."""
    matrix = slice_node.GetSliceToRAS()
    normal = np.array([matrix.GetElement(r, 2) for r in range(3)])
    normal = normal / (np.linalg.norm(normal) or 1.0)
    if normal[np.argmax(np.abs(normal))] < 0:
        normal = -normal
    return tuple(np.round(normal, 6))


def centring_roles(scene, with_second=True):
    """{view name: "center" | "also"}: which slice view goes through which structure.

    Every view goes through the centre structure; with a second structure, one view goes through
    it instead: the Yellow view (sagittal in the conventional layouts) — unless Yellow shows the
    same plane as Red, as in the side-by-side comparison, where both halves must show the same
    place: then the Green view does.
    """
    views = _slice_nodes(scene)
    roles = {name: "center" for name in views}
    if not with_second:
        return roles
    red, yellow = views.get("Red"), views.get("Yellow")
    also = "Yellow"
    if yellow is None or (red is not None and _orientation_key(red) == _orientation_key(yellow)):
        also = "Green"
    if also in roles:
        roles[also] = "also"
    return roles


def _zoom(slice_node, zoom_mm):
    """Show ``zoom_mm`` millimetres across the view's shorter side (square pixels kept)."""
    width, height = slice_node.GetDimensions()[:2]
    width, height = max(int(width), 1), max(int(height), 1)
    fov = slice_node.GetFieldOfView()
    zoom_mm = float(zoom_mm)
    if width >= height:
        slice_node.SetFieldOfView(zoom_mm * width / height, zoom_mm, fov[2])
    else:
        slice_node.SetFieldOfView(zoom_mm, zoom_mm * height / width, fov[2])


def centre_views(scene, volume_node, segmentation_node, center_segment_id, also_segment_id=None, zoom_mm=None):
    """Put the slice views through the centre of a segment, and one of them through a second segment.

    ``center_segment_id`` (e.g. the aorta): every view is centred on its centroid (see
    :func:`segment_centroid`: on ``volume_node``'s voxel grid, the grid the comparison volumes
    share), so the slice offsets land on it and the point sits in the middle of each view.
    ``also_segment_id`` (e.g. the spine): the view chosen by :func:`centring_roles` goes through
    its centroid instead, so both alignments are on screen at once. ``zoom_mm`` > 0 shows that
    many millimetres across each view's shorter side; None or 0 keeps the zoom.

    Returns {view name: {"role", "segment", "ras"}}.
    """
    if zoom_mm is not None and float(zoom_mm) != 0 and not (np.isfinite(float(zoom_mm)) and float(zoom_mm) > 0):
        raise DicycError(f"the field of view must be a positive number of millimetres; got {zoom_mm!r}.")
    if also_segment_id and also_segment_id == center_segment_id:
        also_segment_id = None
    points = {"center": (center_segment_id, segment_centroid(scene, segmentation_node, center_segment_id,
                                                             volume_node)[0])}
    if also_segment_id:
        points["also"] = (also_segment_id, segment_centroid(scene, segmentation_node, also_segment_id, volume_node)[0])
    views = _slice_nodes(scene)
    if not views:
        raise DicycError("the scene has no slice views to centre.")
    result = {}
    for name, role in centring_roles(scene, with_second="also" in points).items():
        node = views[name]
        segment_id, ras = points[role]
        was = node.StartModify()
        node.JumpSliceByCentering(*ras)
        if zoom_mm:
            _zoom(node, zoom_mm)
        node.EndModify(was)
        result[name] = {"role": role, "segment": segment_id, "ras": ras}
    return result
