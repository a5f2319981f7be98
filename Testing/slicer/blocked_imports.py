"""Run a DiCyc code path in a Python where some packages cannot be imported (used by
test_dependencies.py, in a subprocess).

``python blocked_imports.py BLOCKED PATHS [ARGS]``: BLOCKED is a comma-separated list of
top-level package names made unimportable; PATHS a comma-separated list of ``comparison``,
``metrics`` and ``synthesis`` (ARGS: the model file), run in that order, or one of
``samples-prepare`` and ``samples-load`` (ARGS: the samples folder): the engine prepares the
abdominal sample into that folder, or the files already there are loaded into a scene.
``python blocked_imports.py BLOCKED -m MODULE ARGS…`` runs a module as ``python -m`` would — the form ``dicyc_command`` builds, so it can stand in for ``PythonSlicer``
as the interpreter of a background synthesis. Prints ``OK <path>`` and the optional packages
that ended up imported.
"""

import importlib.abc
import os
import runpy
import sys

OPTIONAL = ("scipy", "nibabel", "matplotlib", "torch", "safetensors")


class Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None


def main():
    blocked = [n for n in sys.argv[1].split(",") if n]
    sys.meta_path.insert(0, Blocker(blocked))
    if sys.argv[2] == "-m":  # python -m MODULE ARGS, the blocker inherited through the environment
        os.environ["DICYC_TEST_BLOCKED"] = sys.argv[1]
        sys.argv = [sys.argv[3]] + sys.argv[4:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:0] = [root, os.path.join(root, "DiCycSynthesis"), os.path.join(root, "DiCycTraining")]
    import numpy as np
    import slicer

    import DiCycSynthesisLib as L
    from dicyc.volume import Volume

    scene = slicer.vtkMRMLScene()
    rng = np.random.default_rng(0)
    a = Volume(rng.normal(100, 20, (6, 30, 26)).astype(np.float32), (1.0, 1.0, 3.0))
    a.array[:, 10:20, 8:18] += 150.0
    b = Volume(a.array * 2 + 3, (1.1, 0.9, 3.0), (0.5, -0.5, 1.0))  # another grid: resampled
    na, nb = L.add_volume_node(scene, a, "a"), L.add_volume_node(scene, b, "b")
    for path in sys.argv[2].split(","):
        run(path, scene, L, na, nb)
        print("OK", path, ",".join(sorted(n for n in OPTIONAL if n in sys.modules)), flush=True)


def run(path, scene, L, na, nb):
    if path == "comparison":
        L.make_checkerboard_node(scene, na, nb, 4)
        L.make_error_node(scene, na, nb)
    elif path == "metrics":
        rows = L.roi_metrics(scene, na, nb)
        L.metrics_table_node(scene, rows)
        assert "error" not in rows[0], rows
    elif path in ("samples-prepare", "samples-load"):
        folder = sys.argv[3]
        if path == "samples-prepare":
            L.prepare_sample_set("DiCycAbdomen", folder)
        else:
            nodes = L.load_sample_set(scene, "DiCycAbdomen", folder, prepare=False)
            assert [s for s, _ in L.segment_ids(nodes["segmentation"])] == ["aorta", "spine"]
    elif path == "synthesis":
        model = sys.argv[3]
        L.synthesize_in_process(scene, na, model, device="cpu", precision="fp32")
        # the background path, with this script (and its blocker) as the child's interpreter
        launcher = os.path.join(os.environ["DICYC_TEST_TMP"], "python-without")
        with open(launcher, "w") as fh:
            fh.write(f"#!/bin/sh\nexec {sys.executable} {os.path.abspath(__file__)} {sys.argv[1]} \"$@\"\n")
        os.chmod(launcher, 0o755)
        logic = L.SynthesisLogic(python=launcher)
        logic.start(scene, na, model, device="cpu", precision="fp32")
        code = logic.wait(300)
        assert code == 0, "\n".join(logic.process.output_tail(20))
        logic.finish(scene)
    else:
        raise ValueError(path)

if __name__ == "__main__":
    main()
