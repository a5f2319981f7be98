"""What both DiCyc modules share on the MRML side (no Qt): node ⇄ Volume conversion.

DiCyc Synthesis reads input volumes and writes synthetic ones; DiCyc Training writes scene
volumes to files for ``dicyc train``. Both go through :mod:`DiCycCommonLib.nodes`, the one place
that maps a volume node's voxels and IJK-to-RAS geometry to a :class:`dicyc.volume.Volume` and
back. The package sits beside DiCycDependencies in the DiCycSynthesis folder and is installed
with that module, into the folder both modules' scripts share.
"""

from .nodes import (
    add_volume_node,
    copy_geometry,
    ensure_display_node,
    grey_color_node_id,
    ijk_to_ras_of,
    matrix_to_numpy,
    node_to_world,
    numpy_to_matrix,
    update_node_from_volume,
    volume_from_node,
)

__all__ = [
    "add_volume_node",
    "copy_geometry",
    "ensure_display_node",
    "grey_color_node_id",
    "ijk_to_ras_of",
    "matrix_to_numpy",
    "node_to_world",
    "numpy_to_matrix",
    "update_node_from_volume",
    "volume_from_node",
]
