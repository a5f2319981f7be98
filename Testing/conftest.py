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
            text=True, encoding="utf-8",
            timeout=timeout,
            env=full_env,
        )

    return run
