"""The widget harness itself: the modules' in-Slicer self-tests run under it, and it fails when
the .ui files and the widget code stop matching (a renamed object, an unknown property, class,
enum value or signal) — checked by breaking a copy of a module on purpose."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from standins import SlicerHarness, uiloader  # noqa: E402
from standins.core import StandIn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("safetensors") is not None


@pytest.mark.skipif(not HAS_TORCH, reason="the self-tests' synthesis and training need torch")
@pytest.mark.parametrize("name", ["DiCycSynthesis", "DiCycTraining"])
def test_the_in_slicer_self_tests_pass_under_the_harness(scene, monkeypatch, tmp_path, request, name):
    """What "Reload and Test" (or ctest's py_<Module> test, with --testing) runs inside Slicer.

    DiCyc Synthesis's self-test ends with the abdominal sample loop; its files are put where the
    engine keeps prepared samples (as after a first ``dicyc samples``), so it runs to the end."""
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if name == "DiCycSynthesis":
        request.getfixturevalue("seed_abdomen_samples")(tmp_path / "cache")
    harness = SlicerHarness(scene, monkeypatch, testing=True)
    try:
        harness.load(name)
        assert set(slicer.selfTests) == {name}
        slicer.selfTests[name](msec=0)
        if name == "DiCycSynthesis":  # the sample loop ran to its end: its metrics table is in the scene
            tables = [t for t in slicer.util.getNodesByClass("vtkMRMLTableNode") if t.GetNumberOfRows() == 2]
            assert [tables[-1].GetCellText(r, 0) for r in range(2)] == ["aorta", "spine"]
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            assert any(n.GetAttribute("DiCyc.Checkerboard") for n in volumes)
    finally:
        harness.finish()


# ===================================================================== breaking a copy on purpose
def _broken_copy(tmp_path, name, file, old, new):
    folder = tmp_path / name
    shutil.copytree(ROOT / name, folder, ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / file
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {file}"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return folder


BREAKAGES = [
    # (module, file, text, replacement, error type, message)
    ("DiCycSynthesis", "Resources/UI/DiCycSynthesis.ui", 'name="synthesizeButton"', 'name="synthesiseButton"',
     AttributeError, "synthesizeButton"),
    ("DiCycSynthesis", "Resources/UI/DiCycSynthesis.ui", 'name="restoreViewsButton"', 'name="restoreButton"',
     AttributeError, "restoreViewsButton"),
    ("DiCycSynthesis", "Resources/UI/DiCycSynthesis.ui", 'name="centerSegmentComboBox"', 'name="centreSegmentComboBox"',
     AttributeError, "centerSegmentComboBox"),
    ("DiCycTraining", "Resources/UI/DiCycTraining.ui", 'name="outputDirectoryPathLineEdit"',
     'name="outputFolderPathLineEdit"', AttributeError, "outputDirectoryPathLineEdit"),
    ("DiCycSynthesis", "Resources/UI/DiCycSynthesis.ui", '<property name="noneDisplay">', '<property name="noneText">',
     uiloader.UiError, "has no such property"),
    ("DiCycSynthesis", "Resources/UI/DiCycSynthesis.ui", 'class="ctkSliderWidget"', 'class="ctkSliderWidgett"',
     uiloader.UiError, "unknown widget class 'ctkSliderWidgett'"),
    ("DiCycTraining", "Resources/UI/DiCycTraining.ui", "ctkPathLineEdit::Writable", "ctkPathLineEdit::Writeable",
     uiloader.UiError, "Writeable is not a known"),
    ("DiCycTraining", "Resources/UI/DiCycTraining.ui", "<bool>true</bool>", "<bool>yes</bool>",
     uiloader.UiError, "must be true or false"),
    ("DiCycSynthesis", "DiCycSynthesis.py", '"contentsCollapsed(bool)"', '"collapsedChanged(bool)"',
     AttributeError, "has no signal 'collapsedChanged"),
    ("DiCycTraining", "DiCycTraining.py", "self.ui.methodComboBox.setItemData(", "self.ui.methodComboBox.setItemRole(",
     AttributeError, "no property, method or signal 'setItemRole'"),
    ("DiCycSynthesis", "DiCycSynthesis.py", "self.ui.exportCsvButton.enabled = ", "self.ui.exportCsvButton.enable = ",
     AttributeError, "has no property 'enable' to set"),
]


@pytest.mark.parametrize("module,file,old,new,error,message", BREAKAGES,
                         ids=[f"{b[0]}:{b[2][:28]}" for b in BREAKAGES])
def test_a_broken_copy_of_a_module_fails(scene, monkeypatch, tmp_path, module, file, old, new, error, message):
    harness = SlicerHarness(scene, monkeypatch)
    try:
        folder = _broken_copy(tmp_path, module, file, old, new)
        with pytest.raises(error, match=re.escape(message)):
            harness.load(module, folder)
            harness.select(module)
    finally:
        harness.unload_all()  # the half-built widget's cleanup() takes its observers off the scene
        harness.slot_errors.clear()  # (and may stumble over what setup() never made)
        harness.finish()


def test_an_unbroken_copy_loads(scene, monkeypatch, tmp_path):
    """The control for the test above: the copy itself is fine."""
    harness = SlicerHarness(scene, monkeypatch)
    try:
        for module in ("DiCycSynthesis", "DiCycTraining"):
            folder = tmp_path / module
            shutil.copytree(ROOT / module, folder, ignore=shutil.ignore_patterns("__pycache__"))
            harness.load(module, folder)
            harness.select(module)
    finally:
        harness.finish()


def test_stand_ins_refuse_what_their_class_does_not_have():
    from standins import ctk, mrml, qt

    button = qt.QPushButton("OK")
    with pytest.raises(AttributeError, match="has no property 'txet' to set"):
        button.txet = "x"
    with pytest.raises(AttributeError, match="no property, method or signal 'setTxet'"):
        button.setTxet("x")
    with pytest.raises(AttributeError, match="has no signal 'clicked\\(int\\)'"):
        button.connect("clicked(int)", print)
    with pytest.raises(TypeError, match="bool property"):
        button.enabled = "yes"
    with pytest.raises(TypeError, match="int property"):
        qt.QSpinBox().value = 2.5
    with pytest.raises(AttributeError, match="read-only"):
        qt.QComboBox().count = 3
    combo = mrml.qMRMLNodeComboBox()
    with pytest.raises(AttributeError):
        combo.currentNodes()
    assert isinstance(ctk.ctkPathLineEdit(), StandIn)

    class UserObject(qt.QObject):  # a module's own subclass may keep attributes, as in PythonQt
        pass

    user = UserObject()
    user.widget = 3
    assert user.widget == 3
