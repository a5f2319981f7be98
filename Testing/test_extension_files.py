"""The extension's packaging promises: the licence, the icon and screenshot URLs naming files that
exist, build-time testing wired as in Slicer's templates."""

import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
URL_PREFIX = "https://raw.githubusercontent.com/dicyc/SlicerDiCyc/main/"


def _cmake_value(name):
    match = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert match, f"{name} is not set in CMakeLists.txt"
    return match.group(1)


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_license_is_bsd_3_clause_as_pyproject_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Neither the name of the copyright holder" in text
    assert 'license = { text = "BSD-3-Clause" }' in (ROOT / "pyproject.toml").read_text()


def test_icon_and_screenshot_urls_name_files_in_the_repository():
    for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in _cmake_value(name).split():
            assert url.startswith(URL_PREFIX), url
            path = ROOT / url[len(URL_PREFIX):]
            assert path.is_file(), f"{name} names {path.relative_to(ROOT)}, which does not exist"
            width, height = _png_size(path)
            assert width >= 128 and height >= 128
    screenshot = ROOT / "Resources" / "Screenshots" / "comparison-views.png"
    assert _png_size(screenshot)[0] >= 600 and (screenshot.parent / "render_comparison_views.py").is_file()


def test_build_time_testing_is_wired_as_in_the_templates():
    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"if\(BUILD_TESTING\)\s*add_subdirectory\(Testing\)\s*endif\(\)", top)
    testing = (ROOT / "Testing" / "CMakeLists.txt").read_text()
    assert "add_test(" in testing and "--ignore=${CMAKE_CURRENT_SOURCE_DIR}/slicer" in testing
    for module in ("DiCycSynthesis", "DiCycTraining"):
        cmake = (ROOT / module / "CMakeLists.txt").read_text()
        assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake and "WITH_GENERIC_TESTS" in cmake
