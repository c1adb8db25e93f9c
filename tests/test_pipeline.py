"""`reid pipeline`: one job graph; steps whose outputs are committed and current are skipped.

The end-to-end test runs ingest -> embed -> index -> match -> evaluate on a real local Ray, runs it
again (nothing to do), then "reprocesses the archive with model v2 and rebuilds the population
index" with one command and checks that exactly the model-dependent steps ran.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch

from jobs.pipeline import PipelineConfig, load, run, staleness
from reid import manifest
from reid.errors import ConfigError, ReidError
from reid.model.network import create_model
from reid.model.package import save_package
from reid.model.spec import ModelSpec
from tests.support.images import jpeg_bytes, photo

GRAPH = """
[vars]
root = "{root}"
model = "{root}/models/v1"
tag = "v1"

[ingest]
src = "{root}/photos"
out = "${{root}}/archive"
survey = "2024"

[embed]
archive = "${{ingest.out}}"
model = "${{model}}"
out = "${{root}}/embeddings/${{tag}}"
batch_size = 8

[index]
embeddings = ["${{embed.out}}"]
out = "${{root}}/index/${{tag}}"
calibration_queries = 0

[match]
index = "${{index.out}}"
out = "${{root}}/matches/${{tag}}"
k = 5

[evaluate]
embeddings = "${{embed.out}}"
out = "${{root}}/reports/${{tag}}"
report = false
"""


def _write(tmp_path, text: str, name: str = "survey.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _actions(summary: dict) -> dict[str, str]:
    return {r["step"]: r["action"] for r in summary["detail"]}


# --------------------------------------------------------------------------------------------
# Loading and planning (no job runs)


def test_references_order_and_overrides(tmp_path):
    text = GRAPH.format(root=tmp_path).replace(
        "[ingest]", '[match2]\njob = "match"\nindex = "${index.out}"\nout = "${root}/m2"\n\n[ingest]'
    )
    f = _write(tmp_path, text)
    steps = load(PipelineConfig(file=f, set=["tag=v7", "embed.batch_size=16"]))
    names = [s.name for s in steps]
    assert names.index("ingest") < names.index("embed") < names.index("index") < names.index("match2")
    by = {s.name: s for s in steps}
    assert by["embed"].config.archive == f"{tmp_path}/archive"
    assert by["embed"].config.out == f"{tmp_path}/embeddings/v7" and by["embed"].config.batch_size == 16
    assert by["index"].config.embeddings == [f"{tmp_path}/embeddings/v7"]  # a list stays a list
    assert by["match2"].job == "match" and by["match2"].deps == ["index"]
    assert by["evaluate"].deps == ["embed"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("batch_size = 8", "batch_sise = 8"), r"unknown field\(s\) batch_sise"),
        (lambda t: t.replace("${ingest.out}", "${ingestt.out}"), r"there is no step \[ingestt\]"),
        (
            lambda t: t.replace('"${model}"', '"${modell}"'),
            r"uses \$\{modell\}, which \[vars\] does not define",
        ),
        (lambda t: t.replace("batch_size = 8", "batch_size = 0"), r"step \[embed\] \(embed\): .*batch_size"),
        (lambda t: t.replace("[evaluate]", '[evaluate]\njob = "evaluat"'), "not a job that can be submitted"),
        (lambda t: t.replace('src = "', 'src = "${embed.out}" #'), "cycle"),
    ],
)
def test_bad_pipelines_fail_before_anything_runs(tmp_path, edit, message):
    f = _write(tmp_path, edit(GRAPH.format(root=tmp_path)))
    with pytest.raises(ReidError, match=message):
        load(PipelineConfig(file=f))


def test_force_of_an_unknown_step_and_bad_set_are_refused(tmp_path):
    f = _write(tmp_path, GRAPH.format(root=tmp_path))
    with pytest.raises(ConfigError, match=r"--force embedd: .* no step \[embedd\]"):
        load(PipelineConfig(file=f, force=["embedd"]))
    with pytest.raises(ConfigError, match="expected VAR=VALUE"):
        load(PipelineConfig(file=f, set=["tag"]))


def test_staleness_reads_manifests_config_and_inputs(tmp_path):
    f = _write(tmp_path, GRAPH.format(root=tmp_path))
    by = {s.name: s for s in load(PipelineConfig(file=f))}
    embed = by["embed"]
    assert staleness(embed) == "no committed output"
    archive = f"{tmp_path}/archive"
    manifest.write_manifest(archive, "ingest", by["ingest"].config.model_dump(), [], {}, manifest.now())
    config = embed.config.model_dump()
    manifest.write_manifest(embed.out, "embed", {**config, "actors": 3}, [archive], {}, manifest.now())
    assert staleness(embed) is None  # execution settings (actors) do not make an output stale
    manifest.write_manifest(embed.out, "embed", {**config, "model": "other"}, [archive], {}, manifest.now())
    assert staleness(embed) == "config changed: model"
    manifest.write_manifest(embed.out, "embed", config, [archive], {}, manifest.now())
    m = json.loads((tmp_path / "archive" / "_manifest.json").read_text())
    m["ended_at"] = "2000-01-01T00:00:00+00:00"  # the archive was re-ingested since
    (tmp_path / "archive" / "_manifest.json").write_text(json.dumps(m))
    assert staleness(embed) == f"input {archive} changed"
    manifest.write_manifest(embed.out, "ingest", config, [], {}, manifest.now())
    with pytest.raises(ReidError, match="holds the output of `reid ingest`"):
        staleness(embed)


# --------------------------------------------------------------------------------------------
# End to end on a real local Ray


def _photos(root, individuals: int = 5, per: int = 4) -> None:
    for i in range(individuals):
        folder = root / "photos" / f"lion_{i}"
        folder.mkdir(parents=True)
        for j in range(per):
            (folder / f"{j}.jpg").write_bytes(jpeg_bytes(photo(72, 56, seed=100 * i + j)))


def _model(path, seed: int) -> str:
    torch.manual_seed(seed)
    spec = ModelSpec(backbone="resnet10t", embedding_dim=16, input_size=48)
    return save_package(create_model(spec, load_pretrained=False), spec, str(path))


@pytest.mark.ray
@pytest.mark.slow
def test_pipeline_runs_skips_and_reprocesses_with_a_new_model(tmp_path, ray_local):
    _photos(tmp_path)
    v1 = _model(tmp_path / "models" / "v1", seed=1)
    v2 = _model(tmp_path / "models" / "v2", seed=2)
    f = _write(tmp_path, GRAPH.format(root=tmp_path))

    first = run(PipelineConfig(file=f))
    assert _actions(first) == dict.fromkeys(["ingest", "embed", "index", "match", "evaluate"], "ran")
    assert manifest.read_manifest(f"{tmp_path}/matches/v1")["job"] == "match"

    again = run(PipelineConfig(file=f))  # everything committed and current: nothing runs
    assert again["ran"] == 0 and again["skipped"] == 5

    # an upstream change is seen downstream, step by step (plan: nothing runs)
    plan = run(PipelineConfig(file=f, force=["embed"], plan=True))
    assert _actions(plan) == {
        "ingest": "skip",
        "embed": "would run",
        "index": "would run",
        "match": "would run",
        "evaluate": "would run",
    }

    # "reprocess this archive with model v2 and rebuild the population index": one command
    v2_run = run(PipelineConfig(file=f, set=[f"model={tmp_path}/models/v2", "tag=v2"]))
    assert _actions(v2_run) == {
        "ingest": "skip",
        "embed": "ran",
        "index": "ran",
        "match": "ran",
        "evaluate": "ran",
    }
    emb2 = manifest.read_manifest(f"{tmp_path}/embeddings/v2")
    assert emb2["model_id"] == v2 != v1
    index2 = manifest.read_manifest(f"{tmp_path}/index/v2")
    assert [i["uri"] for i in index2["inputs"]] == [f"{tmp_path}/embeddings/v2"]
    assert manifest.read_manifest(f"{tmp_path}/index/v1")["inputs"][0]["uri"] == f"{tmp_path}/embeddings/v1"
    assert manifest.read_manifest(f"{tmp_path}/matches/v2")["inputs"][0]["uri"] == f"{tmp_path}/index/v2"
    evaluated = [i["uri"] for i in manifest.read_manifest(f"{tmp_path}/reports/v2")["inputs"]]
    assert f"{tmp_path}/embeddings/v2" in evaluated
    assert run(PipelineConfig(file=f, set=[f"model={tmp_path}/models/v2", "tag=v2"]))["ran"] == 0


def test_cli_plan_and_submission_of_a_pipeline(tmp_path):
    import subprocess
    import sys

    from jobs.submit import prepare

    f = _write(tmp_path, GRAPH.format(root=tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", f, "--plan", "--set", "tag=v3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "[pipeline]" not in r.stderr  # nothing ran: plan only
    assert re.search(r"would_run\s+\W\s+5", r.stderr) and re.search(r"ran\s+\W\s+0", r.stderr)
    # `reid submit pipeline FILE` checks the file (its input), not the --set values
    spec, _ = prepare("pipeline", [f, "--set", f"model={tmp_path}/models/v2"])
    assert spec.entrypoint.startswith(f"python -m jobs.cli pipeline {f} --set")
    with pytest.raises(ReidError, match="input file .*/nope.toml does not exist"):
        prepare("pipeline", [str(tmp_path / "nope.toml")])
