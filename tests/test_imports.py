"""Importing the core stays light: no transformers, no matplotlib, no scipy."""

import subprocess
import sys


def test_import_shared_and_toysim_is_light():
    code = ("import sys, shared, toysim, shared.losses, shared.metrics, shared.sampling, shared.studies, shared.preferences, "
            "toysim.env, toysim.engine, toysim.theory, toysim.study; "
            "bad = [m for m in ('transformers', 'matplotlib', 'scipy', 'tyro') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
