import importlib
import subprocess
import sys

from jobs import registry
from jobs.cli import JOB_MODULES


def test_every_listed_job_imports_and_registers():
    jobs = registry.jobs()
    for name in JOB_MODULES:
        module = importlib.import_module(name)
        registered = [j for j in jobs.values() if j.module == name]
        assert registered or hasattr(module, "register"), name  # a job, or commands of its own


def test_help_lists_the_jobs():
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for job in ["ingest", "synth", "split"]:
        assert job in r.stdout
