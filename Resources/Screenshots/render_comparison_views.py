"""Render Resources/Screenshots/comparison-views.png, the picture the extension's
EXTENSION_SCREENSHOTURLS points at.

It is not a screenshot of the Slicer application (none can run where this project is built):
it shows what DiCyc Synthesis puts into Slicer's slice views, rendered by Slicer's own slice
logic (vtkMRMLSliceLogic from the slicer-core wheel, offscreen) from the module's own logic:
the sample head MR (Colin27 T1, `dicyc samples head-mr`), its synthetic CT made with the bundled
demo model, and the Compare section's checkerboard and overlay. Run from the repository root,
in the test environment (`make test` installs slicer-core):

    .venv/bin/python Resources/Screenshots/render_comparison_views.py
"""

import sys
from pathlib import Path

import numpy as np
from vtk.util import numpy_support

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "DiCycSynthesis")]

import slicer  # noqa: E402

import DiCycSynthesisLib as L  # noqa: E402
from dicyc.samples import prepare  # noqa: E402
from dicyc.volume import read_volume  # noqa: E402

OUT = Path(__file__).with_name("comparison-views.png")
MODEL = ROOT / "Resources" / "Models" / "head-mr2ct-cyclegan.safetensors"
SIZE = 360


def slice_views(scene):
    """Slicer's standard layouts and the Red/Yellow/Green views with their slice logics."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layout = slicer.vtkMRMLLayoutLogic()
    layout.SetMRMLScene(scene)
    layout.GetLayoutNode().SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    logics = {}
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(nodes.GetNumberOfItems()):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.SetSliceNode(nodes.GetItemAsObject(i))
        logics[nodes.GetItemAsObject(i).GetLayoutName()] = logic
    return layout, logics


def render(logic):
    """The view's composited RGB image, as Slicer draws it."""
    logic.GetSliceNode().SetDimensions(SIZE, SIZE, 1)
    logic.FitSliceToAll()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    w, h, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    return pixels


def main():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    layout, logics = slice_views(scene)
    mr_path = prepare(["head-mr"])["head-mr"]
    mr = L.add_volume_node(scene, read_volume(mr_path), "Colin27 T1")
    synthetic, info = L.synthesize_in_process(scene, mr, str(MODEL), device="cpu")
    board = L.make_checkerboard_node(scene, synthetic, mr, tiles=8)

    panels = []
    L.setup_overlay(scene, board, None, opacity=0.0, layout="reveal")
    panels.append((render(logics["Red"]), "Checkerboard: synthetic CT | source MR (axial)"))
    L.setup_overlay(scene, synthetic, mr, opacity=0.5, layout="reveal")
    panels.append((render(logics["Green"]), "Layer reveal: MR at opacity 0.5 over synthetic CT (coronal)"))
    L.setup_overlay(scene, synthetic, mr, opacity=0.0, layout="side-by-side")
    panels.append((render(logics["Red"]), "Side by side, Red: synthetic CT, W 400 / L 40 HU"))
    panels.append((render(logics["Yellow"]), "Side by side, Yellow: source MR (linked)"))

    figure = Figure(figsize=(8.0, 9.0), dpi=100, facecolor="black")
    for index, (pixels, title) in enumerate(panels):
        ax = figure.add_axes([0.005 + 0.5 * (index % 2), 0.485 - 0.44 * (index // 2), 0.49, 0.405])
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(title, color="white", fontsize=8.5, pad=4)
        ax.axis("off")
    figure.text(0.5, 0.962, "DiCyc Synthesis — the Compare views", color="white", ha="center", fontsize=13)
    figure.text(0.5, 0.012, "Rendered offscreen by Slicer's slice logic (slicer-core) from the module's own logic:\n"
                f"sample head MR (Colin27), synthetic CT from the bundled demo model ({info['slices']} slices on CPU). "
                "Not a screenshot of the Slicer application.", color="#bbbbbb", ha="center", fontsize=7.5)
    FigureCanvasAgg(figure).print_png(str(OUT))
    for logic in logics.values():
        logic.SetMRMLScene(None)
    layout.SetMRMLScene(None)
    print(OUT)


if __name__ == "__main__":
    main()
