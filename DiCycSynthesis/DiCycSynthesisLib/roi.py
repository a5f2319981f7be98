"""ROI metrics: MSE, PSNR, SSIM, MAE per segment of a segmentation or inside a Markups ROI box.

The numbers are those of ``dicyc evaluate --mask`` (:func:`dicyc.metrics.evaluate_volumes`) on
masks that Slicer's own segmentation logic exports onto the reference grid.
"""

import math
import warnings

import numpy as np
import vtk

import slicer

from DiCycCommonLib.nodes import ijk_to_ras_of, matrix_to_numpy, node_to_world, volume_from_node
from dicyc.errors import DicycError


def roi_box_mask(ref_node, roi_node):
    """Boolean (k, j, i) mask of ``ref_node``'s voxels whose centre lies inside the Markups ROI box.

    The box may be rotated (its object-to-world matrix) and either node may sit under a linear
    transform. Only the voxels within the box's index-space bounding box are tested, so a small
    ROI on a big CT costs little memory.
    """
    image = ref_node.GetImageData()
    nx, ny, nz = image.GetDimensions()
    ijk_to_world = node_to_world(ref_node) @ ijk_to_ras_of(ref_node)
    object_to_world = matrix_to_numpy(roi_node.GetObjectToWorldMatrix())
    size = np.array(roi_node.GetSize(), dtype=float)
    half = size / 2.0
    # corners of the box in IJK, to bound the voxels worth testing
    corners = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0]
                        for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    world_to_ijk = np.linalg.inv(ijk_to_world)
    ijk = (world_to_ijk @ object_to_world @ corners.T).T[:, :3]
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int), np.array([nx, ny, nz]) - 1)
    mask = np.zeros((nz, ny, nx), dtype=bool)
    if np.any(hi < lo):
        return mask
    ii, jj, kk = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), np.arange(lo[2], hi[2] + 1),
                             indexing="ij")
    points = np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    ijk_to_object = np.linalg.inv(object_to_world) @ ijk_to_world
    local = (ijk_to_object @ points)[:3]
    tol = 1e-9 * max(1.0, float(np.abs(half).max()))
    inside = np.all(np.abs(local) <= half[:, None] + tol, axis=0)
    mask[points[2, inside].astype(int), points[1, inside].astype(int), points[0, inside].astype(int)] = True
    return mask


def _node_ids(scene, class_name):
    nodes = scene.GetNodesByClass(class_name)
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


def segment_masks(scene, segmentation_node, ref_node, segment_ids=None):
    """[(segment id, segment name, boolean (k, j, i) mask on ref_node's grid)] for each segment.

    Each segment is exported on its own (so overlapping segments keep all their voxels) to a
    temporary labelmap node with the reference volume as geometry, using Slicer's
    ``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode``.
    """
    segmentation = segmentation_node.GetSegmentation()
    if segment_ids is None:
        segment_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    reference = volume_from_node(ref_node, copy=False)
    out = []
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise DicycError(f"segment {segment_id} is not in {segmentation_node.GetName()}.")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        colors_before = _node_ids(scene, "vtkMRMLColorTableNode")
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__dicyc_tmp_mask")
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, ref_node
            )
            if not ok or labelmap.GetImageData() is None:
                raise DicycError(f"segment {segment.GetName()} could not be exported onto {ref_node.GetName()}.")
            mask_vol = volume_from_node(labelmap)
        finally:
            display = labelmap.GetDisplayNode()
            scene.RemoveNode(labelmap)
            if display is not None and display.GetScene() is not None:
                scene.RemoveNode(display)
            # the export makes a colour table for the labelmap: remove it with the labelmap
            for node_id in _node_ids(scene, "vtkMRMLColorTableNode") - colors_before:
                scene.RemoveNode(scene.GetNodeByID(node_id))
        if mask_vol.shape != reference.shape or not mask_vol.same_grid(reference, tol=1e-3):
            from dicyc.preprocess import resample_to_grid

            mask_vol = resample_to_grid(mask_vol.with_array((mask_vol.array != 0).astype(np.uint8)), reference,
                                        interpolation="nearest", default_value=0)
        out.append((segment_id, segment.GetName(), mask_vol.array != 0))
    return out


def _metrics_row(pred_vol, ref_vol, mask, label, source, data_range):
    from dicyc.metrics import evaluate_volumes

    row = {"segment": label, "source": source}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_volumes(pred_vol, ref_vol, mask=mask, data_range=data_range,
                                      pred_name="the prediction", ref_name="the reference")
        row.update(result)
        if caught:
            row["note"] = " ".join(str(w.message) for w in caught)
    except DicycError as exc:
        row.update({k: math.nan for k in ("mse", "psnr", "ssim", "ssim_hg", "mae", "nmi")})
        row["n_voxels"] = int(np.count_nonzero(mask)) if mask is not None else 0
        row["error"] = str(exc)
    return row


def roi_metrics(scene, pred_node, ref_node, segmentation_node=None, roi_node=None, segment_ids=None,
                data_range=None):
    """MSE, PSNR, SSIM, MAE (and SSIM(HG), NMI) of ``pred_node`` against ``ref_node`` per region.

    One row per segment of ``segmentation_node`` (or of ``segment_ids``), one for the Markups ROI
    box ``roi_node``, or — with neither — one for the whole volume. Masks are on the reference
    grid; the prediction is resampled (linear) onto it where the grids differ, exactly as
    ``dicyc evaluate --mask`` does (:func:`dicyc.metrics.evaluate_volumes`), so the numbers are
    the CLI's. Each row is a dict with ``segment``, ``source`` ("segmentation", "roi" or
    "volume"), the metric keys of :data:`dicyc.metrics.METRIC_KEYS`, ``resampled``, and
    ``error`` (one sentence, metrics NaN) for an empty or unusable region.
    """
    if pred_node is None or ref_node is None:
        raise DicycError("select both a synthetic and a reference volume.")
    pred_vol = volume_from_node(pred_node, copy=False)
    ref_vol = volume_from_node(ref_node, copy=False)
    rows = []
    if segmentation_node is not None:
        for segment_id, name, mask in segment_masks(scene, segmentation_node, ref_node, segment_ids):
            row = _metrics_row(pred_vol, ref_vol, mask, name, "segmentation", data_range)
            row["segment_id"] = segment_id
            rows.append(row)
    if roi_node is not None:
        rows.append(_metrics_row(pred_vol, ref_vol, roi_box_mask(ref_node, roi_node), roi_node.GetName(), "roi",
                                 data_range))
    if segmentation_node is None and roi_node is None:
        rows.append(_metrics_row(pred_vol, ref_vol, None, "whole volume", "volume", data_range))
    return rows
