"""DiCyc's samples in Slicer (DiCycSynthesisLib.samples and the module's Sample Data registration),
on real MRML nodes from slicer-core: the files are the engine's own, loading gives the right nodes
and segments, the aorta-ROI metric on the abdominal sample is the engine's, and Sample Data (a
stand-in that keeps registrations as Slicer does) gets local sources whose button loads the set
into DiCyc Synthesis.
"""

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

import DiCycSynthesisLib as L  # noqa: E402
from dicyc.errors import DicycError  # noqa: E402
from dicyc.metrics import evaluate_volumes  # noqa: E402
from dicyc.volume import read_volume  # noqa: E402
from standins import sampledata  # noqa: E402

ABDOMEN_SAMPLE = "DiCycAbdomen"
ABDOMEN_FILES = ["abdomen-mr", "abdomen-ct", "abdomen-ct-in-mr", "abdomen-aorta-mr", "abdomen-spine-mr"]


def _engine(folder, sample):
    return read_volume(folder / f"{sample}.nii.gz", check_finite=False)


def test_the_sets_are_the_engines_samples_where_the_engine_prepares_them(abdomen_samples, tmp_path, monkeypatch):
    from dicyc.samples import list_samples

    known = {name for name, _ in list_samples()}
    assert set(L.SAMPLE_SETS) == {"DiCycAbdomen", "DiCycHead"}
    assert L.sample_names(ABDOMEN_SAMPLE) == ABDOMEN_FILES
    assert L.sample_names("DiCycHead") == ["head-mr", "head-ct"]
    assert all(name in known for s in L.SAMPLE_SETS for name in L.sample_names(s))
    folder, _ = abdomen_samples
    # the engine returns exactly the paths the registration points at (preparing nothing more: done)
    assert L.prepare_sample_set(ABDOMEN_SAMPLE, folder) == L.sample_paths(ABDOMEN_SAMPLE, folder)
    assert L.missing_files(ABDOMEN_SAMPLE, folder) == []
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    assert L.sample_paths("DiCycHead") == {n: tmp_path / "cache" / "samples" / f"{n}.nii.gz"
                                           for n in ("head-mr", "head-ct")}
    assert L.missing_files("DiCycHead") == ["head-mr", "head-ct"]
    with pytest.raises(DicycError, match="no DiCyc sample called 'MRHead'; the samples are DiCycAbdomen, DiCycHead"):
        L.sample_set("MRHead")
    with pytest.raises(DicycError, match=r"not prepared yet \(head-mr, head-ct\); run 'dicyc samples head-mr head-ct'"):
        L.load_sample_set(slicer.vtkMRMLScene(), "DiCycHead", prepare=False)


def test_loading_the_abdominal_sample_gives_its_volumes_and_one_segmentation_of_aorta_and_spine(abdomen_samples,
                                                                                                 scene):
    folder, _ = abdomen_samples
    before = {cls: scene.GetNumberOfNodesByClass(cls) for cls in ("vtkMRMLColorTableNode", "vtkMRMLLabelMapVolumeNode")}
    nodes = L.load_sample_set(scene, ABDOMEN_SAMPLE, folder, prepare=False)
    assert set(nodes) == {"mr", "ct", "ct_truth", "segmentation"}
    assert [nodes[r].GetName() for r in ("mr", "ct", "ct_truth", "segmentation")] == [
        "Abdomen MR (T2*)", "Abdomen CT", "Abdomen CT in MR posture (ground truth)", "Abdomen segments (MR posture)"]
    for role, sample in (("mr", "abdomen-mr"), ("ct", "abdomen-ct"), ("ct_truth", "abdomen-ct-in-mr")):
        engine = _engine(folder, sample)
        assert np.array_equal(L.volume_from_node(nodes[role]).array, engine.array)
        assert np.allclose(L.ijk_to_ras_of(nodes[role]), engine.ijk_to_ras(), atol=1e-9)
        assert nodes[role].GetAttribute("DiCyc.Sample") == f"{ABDOMEN_SAMPLE}/{sample}"
    assert nodes["ct"].GetDisplayNode().GetWindow() == 400.0 and nodes["ct_truth"].GetDisplayNode().GetLevel() == 40.0
    assert nodes["mr"].GetDisplayNode().GetAutoWindowLevel()
    # one segmentation node; its segments are exactly the engine's masks, with Slicer's anatomy colours
    segmentation = nodes["segmentation"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert L.segment_ids(segmentation) == [("aorta", "aorta"), ("spine", "spine")]
    masks = {name: mask for _, name, mask in L.segment_masks(scene, segmentation, nodes["mr"])}
    for name in ("aorta", "spine"):
        assert np.array_equal(masks[name], _engine(folder, f"abdomen-{name}-mr").array != 0)
    color = segmentation.GetSegmentation().GetSegment("aorta").GetColor()
    assert np.allclose(color, L.samples.ARTERY_COLOR)
    assert segmentation.GetDisplayNode() is not None
    # nothing left behind by the loading (no labelmaps, no colour tables)
    assert {cls: scene.GetNumberOfNodesByClass(cls) for cls in before} == before


def test_the_aorta_roi_metric_on_the_abdominal_sample_is_the_engines_and_sees_the_posture(abdomen_samples, scene):
    """The paper's metric: inside the aorta, against the CT in the MR's posture. The CT acquired in its
    own posture (aorta shifted against a rigid spine, back flattened) is a prediction that is
    anatomically right but misaligned: poor in the aorta while the spine still matches, and clearly
    worse in the aorta than a slightly noisy copy of the truth."""
    folder, _ = abdomen_samples
    nodes = L.load_sample_set(scene, ABDOMEN_SAMPLE, folder, prepare=False)
    truth = nodes["ct_truth"]
    rows = L.roi_metrics(scene, nodes["ct"], truth, segmentation_node=nodes["segmentation"])
    assert [(r["segment"], r["segment_id"], r["source"]) for r in rows] == [
        ("aorta", "aorta", "segmentation"), ("spine", "spine", "segmentation")]
    aorta = _engine(folder, "abdomen-aorta-mr")
    direct = evaluate_volumes(_engine(folder, "abdomen-ct"), _engine(folder, "abdomen-ct-in-mr"), mask=aorta)
    for key in ("mse", "psnr", "ssim", "mae"):
        assert rows[0][key] == pytest.approx(direct[key], rel=1e-9), key
    assert rows[0]["n_voxels"] == int(np.count_nonzero(aorta.array))
    assert rows[0]["ssim"] < 0.5 < 0.9 < rows[1]["ssim"]  # no single alignment fits the aorta and the spine

    rng = np.random.default_rng(0)
    truth_array = L.volume_from_node(truth).array
    aligned = L.add_volume_node(scene, L.volume_from_node(truth).with_array(
        (truth_array + rng.normal(0, 10, truth_array.shape)).astype(np.float32)), "aligned")
    good, = L.roi_metrics(scene, aligned, truth, segmentation_node=nodes["segmentation"], segment_ids=["aorta"])
    assert good["ssim"] > rows[0]["ssim"] + 0.2 and good["mae"] < rows[0]["mae"] / 3
    table = L.metrics_table_node(scene, rows)
    assert table.GetCellText(0, 0) == "aorta" and table.GetNumberOfRows() == 2


def test_registration_points_sample_data_at_the_engines_files(slicer_app, monkeypatch, tmp_path):
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    slicer_app.load("DiCycSynthesis")
    assert not hasattr(slicer.modules, "sampleDataSources")  # registered once the application has started
    slicer_app.startup_completed()
    sources = sampledata.SampleDataLogic.sampleDataSourcesByCategory("DiCyc")
    assert [s.sampleName for s in sources] == ["DiCycAbdomen", "DiCycHead"]
    assert sampledata.SampleDataLogic.categoryTitle("DiCyc") == "DiCyc"
    abdomen, head = sources
    paths = L.sample_paths(ABDOMEN_SAMPLE)
    assert abdomen.uris == [p.resolve().as_uri() for p in paths.values()]
    assert all(uri.startswith("file:///") for s in sources for uri in s.uris)  # local files: no network
    assert abdomen.fileNames == [f"{n}.nii.gz" for n in ABDOMEN_FILES]
    assert abdomen.nodeNames == ["Abdomen MR (T2*)", "Abdomen CT", "Abdomen CT in MR posture (ground truth)", None,
                                 None]
    assert abdomen.loadFileTypes == ["VolumeFile"] * 3 + [None, None]
    assert head.nodeNames == ["Head MR (Colin27 T1)", "Head CT (InVesalius)"]
    assert repr(abdomen.customDownloader) == "DiCycSampleLoader('DiCycAbdomen')"
    assert abdomen.thumbnailFileName.endswith("DiCycSynthesis.png")
    from pathlib import Path

    assert Path(abdomen.thumbnailFileName).is_file()
    # a second start-up (or a Reload re-running the module) does not register twins
    slicer_app.startup_completed()
    assert len(sampledata.SampleDataLogic.sampleDataSourcesByCategory("DiCyc")) == 2


def test_clicking_the_abdominal_sample_loads_it_into_dicyc_synthesis(slicer_app, abdomen_cache):
    scene = slicer_app.scene
    slicer_app.load("DiCycSynthesis")
    slicer_app.select("DiCycTraining")  # the user is elsewhere
    slicer_app.startup_completed()
    nodes = sampledata.click("DiCycAbdomen")
    assert slicer_app.current == "DiCycSynthesis"  # the module the sample is for is opened
    w = slicer_app.widgets["DiCycSynthesis"]
    ui = w.ui
    assert ui.inputVolumeSelector.currentNode() is nodes["mr"]
    assert ui.referenceVolumeSelector.currentNode() is nodes["ct_truth"]
    assert ui.segmentationSelector.currentNode() is nodes["segmentation"]
    assert ui.compareSegmentationSelector.currentNode() is nodes["segmentation"]
    assert ui.centerSegmentComboBox.currentText == "aorta" and ui.alsoSegmentComboBox.currentText == "spine"
    assert ui.zoomSpinBox.value == 120
    assert ui.synthesizeButton.enabled  # the bundled model is selected: Synthesize CT is one click away
    red = L.slice_composite_nodes(scene)["Red"]
    assert red.GetBackgroundVolumeID() == nodes["mr"].GetID()
    assert any("DiCyc sample DiCycAbdomen loaded" in m for m in slicer_app.status_messages)
    assert slicer_app.dialogs == [] and slicer_app.pip_installs == []


def test_a_sample_not_yet_prepared_asks_only_for_what_preparing_needs(slicer_app, monkeypatch, tmp_path):
    import DiCycDependencies

    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))  # nothing prepared there
    real = DiCycDependencies.installed
    monkeypatch.setattr(DiCycDependencies, "installed", lambda name: name not in ("scipy", "nibabel") and real(name))
    slicer_app.load("DiCycSynthesis")
    slicer_app.startup_completed()
    slicer_app.expect_dialog("question", answer=False, match=r"DiCyc samples needs.*scipy>=1\.7.*nibabel>=3\.2")
    assert sampledata.click("DiCycHead") == {}
    assert "torch" not in slicer_app.dialogs[-1].text
    assert slicer_app.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0 and slicer_app.pip_installs == []
