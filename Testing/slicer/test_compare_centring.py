"""Compare centred on segments (DiCycSynthesisLib.compare.centre_views), on real slice nodes and slice
logics from slicer-core: every view goes through the centre segment's centroid (the aorta), one view
through the second segment's (the spine), at a voxel centre as ``dicyc compare --center-on`` picks
it, with the chosen field of view."""

import numpy as np
import pytest
import vtk
from vtk.util import numpy_support

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

import DiCycSynthesisLib as L  # noqa: E402
from dicyc.errors import DicycError  # noqa: E402
from dicyc.views import _default_point  # noqa: E402  (the CLI's --center-on point)
from dicyc.volume import read_volume  # noqa: E402


def _matrix(array):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r][c]))
    return m


def _segmentation(scene, volume_node, boxes):
    """A segmentation whose segments are boxes {segment id: (k0, k1, j0, j1, i0, i1)} on the volume's grid."""
    ref = L.volume_from_node(volume_node)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    masks = {}
    for segment_id, (k0, k1, j0, j1, i0, i1) in boxes.items():
        labels = np.zeros(ref.shape, np.uint8)
        labels[k0:k1, j0:j1, i0:i1] = 1
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(labels.shape[2], labels.shape[1], labels.shape[0])
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels.ravel(), deep=True,
                                                                   array_type=vtk.VTK_UNSIGNED_CHAR))
        image.SetImageToWorldMatrix(_matrix(ref.ijk_to_ras()))
        assert segmentation.AddSegmentFromBinaryLabelmapRepresentation(image, segment_id, [1.0, 0.0, 0.0],
                                                                       segment_id) == segment_id
        masks[segment_id] = labels != 0
    return segmentation, masks


def _centroid_ras(volume, mask):
    """Independently: the CLI's point (centroid rounded to a voxel) mapped by the volume's IJK-to-RAS."""
    i, j, k = _default_point(volume, mask)
    return (volume.ijk_to_ras() @ [i, j, k, 1.0])[:3]


@pytest.fixture
def sv(slice_views):
    """The slice views in Slicer's conventional orientations (what its layout gives Red, Yellow, Green)."""
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        slice_views[name].GetSliceNode().SetOrientation(orientation)
    return slice_views


def _fixed_coordinate(logic):
    """(RAS axis, coordinate) that the view's slice offset fixes, for a view normal to an RAS axis."""
    normal = np.array([logic.GetSliceNode().GetSliceToRAS().GetElement(r, 2) for r in range(3)])
    axis = int(np.argmax(np.abs(normal)))
    assert abs(abs(normal[axis]) - 1.0) < 1e-9, normal
    return axis, logic.GetSliceOffset() * normal[axis]


def _translation(logic):
    matrix = logic.GetSliceNode().GetSliceToRAS()
    return np.array([matrix.GetElement(r, 3) for r in range(3)])


@pytest.fixture
def oblique_case(scene, sv, mr_volume):
    node = L.add_volume_node(scene, mr_volume(shape=(12, 40, 34), spacing=(0.9, 1.1, 3.0)), "synthetic CT")
    # the aorta's centroid falls between voxels (i 11.5 -> 12, j 9.5 -> 10): the point is snapped to a voxel
    segmentation, masks = _segmentation(scene, node, {"aorta": (3, 9, 6, 14, 8, 16), "spine": (2, 10, 24, 33, 12, 22)})
    return node, segmentation, masks


def test_views_go_through_the_aorta_and_yellow_through_the_spine(scene, sv, oblique_case):
    node, segmentation, masks = oblique_case
    volume = L.volume_from_node(node)
    assert {n: sv[n].GetSliceNode().GetOrientation() for n in ("Red", "Yellow", "Green")} == {
        "Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    aorta, spine = _centroid_ras(volume, masks["aorta"]), _centroid_ras(volume, masks["spine"])
    assert _default_point(volume, masks["aorta"]) == (12, 10, 6)
    ras, ijk = L.segment_centroid(scene, segmentation, "aorta", node)
    assert ijk == (12, 10, 6) and np.allclose(ras, aorta, atol=1e-9)

    centred = L.centre_views(scene, node, segmentation, "aorta", "spine")
    assert {n: v["role"] for n, v in centred.items()} == {"Red": "center", "Green": "center", "Yellow": "also"}
    assert centred["Yellow"]["segment"] == "spine" and np.allclose(centred["Red"]["ras"], aorta)
    for name, point in (("Red", aorta), ("Green", aorta), ("Yellow", spine)):
        logic = sv[name]
        assert np.allclose(_translation(logic), point, atol=1e-6), name  # the point sits in the middle of the view
        normal = np.array([logic.GetSliceNode().GetSliceToRAS().GetElement(r, 2) for r in range(3)])
        assert logic.GetSliceOffset() == pytest.approx(float(normal @ point), abs=1e-6), name  # the slice offset
    # the offsets fix the structures' coordinate along each view's axis: S (axial), A (coronal), R (sagittal)
    assert _fixed_coordinate(sv["Red"]) == (2, pytest.approx(aorta[2], abs=1e-6))
    assert _fixed_coordinate(sv["Green"]) == (1, pytest.approx(aorta[1], abs=1e-6))
    assert _fixed_coordinate(sv["Yellow"]) == (0, pytest.approx(spine[0], abs=1e-6))


def test_field_of_view_and_a_single_structure(scene, sv, oblique_case):
    node, segmentation, masks = oblique_case
    red = sv["Red"].GetSliceNode()
    red.SetDimensions(400, 300, 1)
    before = sv["Yellow"].GetSliceNode().GetFieldOfView()
    centred = L.centre_views(scene, node, segmentation, "aorta", zoom_mm=80)
    assert {v["role"] for v in centred.values()} == {"center"}  # no second structure: every view on the aorta
    assert red.GetFieldOfView()[:2] == pytest.approx((80 * 400 / 300, 80.0))  # 80 mm across the shorter side
    assert sv["Yellow"].GetSliceNode().GetFieldOfView()[2] == pytest.approx(before[2])
    same = L.centre_views(scene, node, segmentation, "aorta", "aorta")  # the same segment twice: one structure
    assert {v["role"] for v in same.values()} == {"center"}
    kept = red.GetFieldOfView()
    L.centre_views(scene, node, segmentation, "spine", zoom_mm=None)
    assert red.GetFieldOfView() == pytest.approx(kept)  # no zoom: the field of view is kept


def test_side_by_side_keeps_both_halves_on_the_aorta_and_uses_green_for_the_spine(scene, sv, oblique_case):
    node, segmentation, masks = oblique_case
    L.setup_overlay(scene, node, node, layout="side-by-side")
    assert L.centring_roles(scene) == {"Red": "center", "Yellow": "center", "Green": "also"}
    centred = L.centre_views(scene, node, segmentation, "aorta", "spine")
    aorta = _centroid_ras(L.volume_from_node(node), masks["aorta"])
    assert np.allclose(_translation(sv["Red"]), aorta) and np.allclose(_translation(sv["Yellow"]), aorta)
    assert centred["Green"]["segment"] == "spine"
    L.setup_overlay(scene, node, node, layout="reveal")  # back to sagittal Yellow
    assert L.centring_roles(scene)["Yellow"] == "also"


def test_centring_refuses_what_it_cannot_do_in_one_sentence(scene, sv, oblique_case, mr_volume):
    node, segmentation, _ = oblique_case
    with pytest.raises(DicycError, match="has no segment 'liver'; choose one of its segments"):
        L.centre_views(scene, node, segmentation, "liver")
    far = L.add_volume_node(scene, mr_volume(shape=(4, 10, 10), origin=(500.0, 500.0, 500.0)), "far")
    with pytest.raises(DicycError, match=r"^segment aorta has no voxels inside far\.$"):
        L.centre_views(scene, far, segmentation, "aorta")
    with pytest.raises(DicycError, match="field of view must be a positive number"):
        L.centre_views(scene, node, segmentation, "aorta", zoom_mm=-5)
    with pytest.raises(DicycError, match="select a segmentation and a volume"):
        L.centre_views(scene, None, segmentation, "aorta")
    assert L.segment_ids(None) == [] and L.segment_ids(segmentation) == [("aorta", "aorta"), ("spine", "spine")]


def test_on_the_abdominal_sample_the_offsets_land_on_the_aorta_and_the_spine(abdomen_samples, scene, sv):
    folder, _ = abdomen_samples
    nodes = L.load_sample_set(scene, "DiCycAbdomen", folder, prepare=False)
    centred = L.centre_views(scene, nodes["mr"], nodes["segmentation"], "aorta", "spine", zoom_mm=120)
    aorta = read_volume(folder / "abdomen-aorta-mr.nii.gz", check_finite=False)
    spine = read_volume(folder / "abdomen-spine-mr.nii.gz", check_finite=False)
    aorta_ras, spine_ras = _centroid_ras(aorta, aorta.array != 0), _centroid_ras(spine, spine.array != 0)
    assert _fixed_coordinate(sv["Red"]) == (2, pytest.approx(aorta_ras[2], abs=1e-3))
    assert _fixed_coordinate(sv["Green"]) == (1, pytest.approx(aorta_ras[1], abs=1e-3))
    assert _fixed_coordinate(sv["Yellow"]) == (0, pytest.approx(spine_ras[0], abs=1e-3))
    for name, point in (("Red", aorta_ras), ("Green", aorta_ras), ("Yellow", spine_ras)):
        assert np.allclose(_translation(sv[name]), point, atol=1e-3), name
    assert np.allclose(centred["Yellow"]["ras"], spine_ras, atol=1e-3)
    # anatomy: the aorta lies to the patient's left of the spine and in front of it (RAS: R smaller, A larger)
    assert aorta_ras[0] < spine_ras[0] and aorta_ras[1] > spine_ras[1]
    mr = L.volume_from_node(nodes["mr"])
    ijk = L.segment_centroid(scene, nodes["segmentation"], "aorta", nodes["mr"])[1]
    assert aorta.array[ijk[2], ijk[1], ijk[0]] == 1  # the point is inside the aorta ...
    assert mr.array[ijk[2], ijk[1], ijk[0]] > 0  # ... and inside the MR's body
