"""Shared pytest fixtures: running the CLI as a user would, in a subprocess."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def run_dicyc():
    """Run ``python -m dicyc ARGS`` and return the CompletedProcess (text, captured)."""

    def run(*args, timeout=600, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "dicyc", *map(str, args)],
            capture_output=True,
            encoding="utf-8", errors="replace",
            timeout=timeout,
            env=full_env,
        )

    return run


@pytest.fixture(scope="session")
def toy_pair(tmp_path_factory):
    """Small MR-like and CT-like volumes (an ellipse body with a ring), 12 slices of 40x40 at 2x2x3 mm,
    for fast in-process training runs. Returns the two NIfTI paths."""
    import numpy as np

    from dicyc.volume import Volume, write_volume

    d = tmp_path_factory.mktemp("toy")
    z, y, x = np.indices((12, 40, 40))
    body = ((y - 20) / 14.0) ** 2 + ((x - 20) / 11.0) ** 2 < 1
    ring = body & ~(((y - 20) / 11.0) ** 2 + ((x - 20) / 8.0) ** 2 < 1)
    mr = np.where(body, 300.0, 0.0) + np.where(ring, -200.0, 0.0) + np.random.default_rng(0).normal(0, 5, body.shape)
    ct = np.where(body, 40.0, -1000.0) + np.where(ring, 960.0, 0.0)
    write_volume(Volume(mr.astype(np.float32), (2, 2, 3)), d / "mr.nii.gz")
    write_volume(Volume(ct.astype(np.int16), (2, 2, 3)), d / "ct.nii.gz")
    return str(d / "mr.nii.gz"), str(d / "ct.nii.gz")
