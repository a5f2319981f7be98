"""Logic of the DiCycSynthesis module (MRML, VTK, numpy and ``dicyc`` only; no Qt).

One module per concern, each found in one hop:

* node ⇄ Volume conversion — :mod:`DiCycCommonLib.nodes` (shared with DiCyc Training; its
  names are re-exported here);
* :mod:`.display` — CT windows, the error colour table, how a synthetic volume is shown;
* :mod:`.models` — model cards, bundled models and the user's models folder;
* :mod:`.process` — synthesis in a background process (:class:`SynthesisLogic`) or in this one;
* :mod:`.compare` — checkerboard and error volumes, slice compositing, saving and restoring views,
  centring the views on a segment (and one view on a second segment);
* :mod:`.roi` — metrics per segment or Markups ROI box;
* :mod:`.table` — the metrics table node and its CSV export;
* :mod:`.samples` — DiCyc's Sample Data (the abdominal phantom with its aorta and spine, the head
  pair): where the engine prepares the files, loading them, their Sample Data registration.

Everything takes the MRML scene as a parameter, so ``Testing/slicer`` runs it on real MRML
nodes from the ``slicer-core`` wheel.
"""

from DiCycCommonLib.nodes import (
    add_volume_node,
    copy_geometry,
    ensure_display_node,
    ijk_to_ras_of,
    update_node_from_volume,
    volume_from_node,
)

from .compare import (
    OVERLAY_LAYOUTS,
    centre_views,
    centring_roles,
    create_slice_views,
    make_checkerboard_node,
    make_error_node,
    restore_view_state,
    save_view_state,
    segment_centroid,
    segment_ids,
    setup_overlay,
    slice_composite_nodes,
)
from .display import CT_WINDOWS, DEFAULT_CT_WINDOW, error_color_node, set_ct_window, set_window_level, style_synthetic
from .models import (
    DEFAULT_BUNDLED_MODEL,
    MODELS_ENV,
    add_model,
    bundled_models,
    is_user_model,
    list_models,
    model_search_folders,
    model_summary,
    remove_model,
    target_domain,
    user_models,
    user_models_folder,
)
from .process import SynthesisLogic, synthesize_in_process
from .roi import roi_box_mask, roi_metrics, segment_masks
from .samples import (
    SAMPLE_SETS,
    apply_sample_parameters,
    load_sample_set,
    missing_files,
    prepare_sample_set,
    registration_arguments,
    sample_names,
    sample_paths,
    sample_set,
)
from .table import TABLE_COLUMNS, export_table_csv, metrics_table_node, table_rows

__all__ = [
    "CT_WINDOWS", "DEFAULT_CT_WINDOW", "MODELS_ENV", "OVERLAY_LAYOUTS", "SAMPLE_SETS", "TABLE_COLUMNS",
    "SynthesisLogic",
    "DEFAULT_BUNDLED_MODEL", "add_model", "add_volume_node", "apply_sample_parameters", "bundled_models", "centre_views", "centring_roles",
    "copy_geometry", "create_slice_views", "ensure_display_node",
    "error_color_node", "export_table_csv", "ijk_to_ras_of", "is_user_model", "list_models", "load_sample_set",
    "make_checkerboard_node", "make_error_node", "metrics_table_node", "missing_files", "model_search_folders",
    "model_summary", "prepare_sample_set", "registration_arguments", "remove_model", "restore_view_state",
    "roi_box_mask", "roi_metrics", "sample_names", "sample_paths", "sample_set", "save_view_state",
    "segment_centroid", "segment_ids", "segment_masks", "set_ct_window", "set_window_level", "setup_overlay",
    "slice_composite_nodes", "style_synthetic", "synthesize_in_process", "table_rows", "target_domain",
    "update_node_from_volume", "user_models", "user_models_folder", "volume_from_node",
]
