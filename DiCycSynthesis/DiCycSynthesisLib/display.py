"""Display styling of DiCyc volumes: CT windows, the error colour table, synthetic-volume looks.

* A synthetic CT gets the soft-tissue window **W 400 / L 40 HU** — aorta, muscle and fat are
  distinguishable and bone is white, which is what one checks when judging whether the aorta
  *and* the spine line up. :data:`CT_WINDOWS` lists the alternatives (``"bone"``: W 1500 / L 300).
  Synthetic volumes of other modalities get an automatic window.
* Error images use the colour table node ``"DiCyc error"`` (black → red → yellow → white, a
  "hot" map), created once per scene by :func:`error_color_node`; zero error is made transparent
  with the display node's lower threshold so the background volume shows through.
"""

import slicer

from DiCycCommonLib.nodes import ensure_display_node

from .models import target_domain

#: CT display windows (width, level) in HU; DEFAULT_CT_WINDOW is what a synthetic CT gets.
CT_WINDOWS = {"soft tissue": (400.0, 40.0), "bone": (1500.0, 300.0), "brain": (80.0, 40.0), "lung": (1500.0, -600.0)}
DEFAULT_CT_WINDOW = "soft tissue"
#: Singleton tag (and name) of the error colour table node.
ERROR_COLOR_NAME = "DiCyc error"


def set_window_level(scene, node, window, level):
    """Fixed window/level on the node's display node (automatic window turned off)."""
    display = ensure_display_node(scene, node)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(float(window), float(level))
    return display


def set_ct_window(scene, node, preset=DEFAULT_CT_WINDOW):
    """Apply a CT window preset of :data:`CT_WINDOWS` (default soft tissue, W 400 / L 40 HU)."""
    window, level = CT_WINDOWS[preset] if isinstance(preset, str) else preset
    return set_window_level(scene, node, window, level)


def error_color_node(scene):
    """The "DiCyc error" colour table (black → red → yellow → white), created once per scene.

    Own table rather than a named standard one: Slicer's file-based tables (Inferno, …) are not
    present in a bare MRML scene, and this one reads well as an overlay on a grey volume.
    """
    existing = scene.GetSingletonNode(ERROR_COLOR_NAME, "vtkMRMLColorTableNode")
    if existing is not None:
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetTypeToUser()
    node.SetName(ERROR_COLOR_NAME)
    node.SetSingletonTag(ERROR_COLOR_NAME)
    node.SetHideFromEditors(False)
    n = 256
    node.SetNumberOfColors(n)
    for i in range(n):
        t = i / (n - 1)
        r = min(1.0, 3.0 * t)
        g = min(1.0, max(0.0, 3.0 * t - 1.0))
        b = min(1.0, max(0.0, 3.0 * t - 2.0))
        node.SetColor(i, f"{i}", r, g, b, 1.0)
    scene.AddNode(node)
    return node


def is_ct(domain):
    """True when a model-card domain (``{"name", "modality"}``) is CT."""
    return str(domain.get("modality") or domain.get("name") or "").upper() == "CT"


def style_synthetic(scene, node, card, direction, ct_window=DEFAULT_CT_WINDOW):
    """Display a synthetic volume: the CT window for a CT target, an automatic window otherwise,
    and node attributes ``DiCyc.Synthetic``, ``DiCyc.Direction``, ``DiCyc.TargetModality``."""
    _, tgt = target_domain(card or {}, direction)
    if is_ct(tgt):
        set_ct_window(scene, node, ct_window)
    else:
        display = ensure_display_node(scene, node)
        display.AutoWindowLevelOn()
    node.SetAttribute("DiCyc.Synthetic", "1")
    node.SetAttribute("DiCyc.Direction", direction)
    node.SetAttribute("DiCyc.TargetModality", str(tgt.get("modality") or ""))
