import importlib
import subprocess
import sys

from jobs.cli import JOB_MODULES


def test_every_listed_job_imports_and_registers():
    for name in JOB_MODULES:
        assert hasattr(importlib.import_module(name), "register"), name


def test_help_lists_the_jobs():
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for job in ["ingest", "synth", "split"]:
        assert job in r.stdout
