"""The job registry is the one source of each job's settings: the CLI, `reid submit` and
`reid pipeline` see the same options with the same defaults, and runtime settings never make a
pipeline step stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from pydantic_core import PydanticUndefined
from typer.testing import CliRunner

from jobs import registry
from jobs.options import cli_options, command, shown_default
from jobs.pipeline import PipelineConfig, load, staleness
from jobs.submit import locations, parse_job_args
from reid import manifest
from reid.errors import ReidError

JOBS = registry.jobs()
STEP_JOBS = [name for name, job in JOBS.items() if job.writes]


def _required(job: registry.Job, root) -> dict:
    """A value for every required field (each a location: a folder under ``root``)."""
    values = {}
    for name, info in job.config.model_fields.items():
        if info.is_required():
            path = str(root / f"{job.name}-{name}")
            values[name] = [path] if "list" in str(info.annotation) else path
    return values


def _argv(job: registry.Job, values: dict) -> list[str]:
    argv: list[str] = []
    for name in (a for a in job.args if a in values):
        argv += values[name] if isinstance(values[name], list) else [values[name]]
    for name, value in values.items():
        if name not in job.args:
            argv += [cli_options(job)[name].decls[0].split("/")[0], value]
    return argv


def _app(job: registry.Job) -> typer.Typer:
    app = typer.Typer()
    app.command(job.name)(command(job, lambda cfg: None))
    return app


def _click(job: registry.Job):
    return typer.main.get_command(_app(job))


def test_every_job_registers_its_config_inputs_outputs_and_runtime_fields():
    assert {"synth", "ingest", "split", "train", "embed", "index", "match", "evaluate", "pipeline"} <= set(
        JOBS
    )
    for job in JOBS.values():
        fields = set(job.config.model_fields)
        assert job.help and job.run.__doc__, job.name
        assert set(job.args) <= set(job.inputs) | set(job.outputs) - {"out"}, job.name  # inputs positional
        assert job.runtime <= fields and set(job.inputs) <= fields, job.name
        if job.writes:
            assert "out" in job.outputs, f"{job.name}: outputs are --out"
            assert "out" not in job.args


@pytest.mark.parametrize("name", list(JOBS))
def test_cli_offers_every_field_with_the_config_default(name):
    """One option per field; the CLI holds no default of its own (None = not typed), and the
    default it shows is the config field's."""
    job = JOBS[name]
    options = cli_options(job)
    hidden = {k for k, f in job.flags.items() if f.hidden}
    assert set(options) == set(job.config.model_fields) - hidden
    params = {p.name: p for p in _click(job).params}
    for field, opt in options.items():
        assert opt.help, f"{name} {field}: give the field a description= (it is the option's help)"
        param = params[field]
        info = job.config.model_fields[field]
        assert param.required == (info.is_required() and field not in {a.field for a in job.aliases})
        if not info.is_required():
            assert param.default in (None, ()), f"{name} {field}: the CLI keeps a default of its own"
            default = info.get_default(call_default_factory=True)
            if default not in (None, [], {}):
                shown = param.show_default
                assert shown == shown_default(default), f"{name} {field}: shows {shown!r}, field {default!r}"
        if opt.positional:
            assert param.param_type_name == "argument" and field in job.args
        else:
            assert param.param_type_name == "option" and opt.decls[0].split("/")[0] in param.opts
            assert not param.hidden and param.help == opt.help
    shown = CliRunner().invoke(_app(job), ["--help"])
    assert shown.exit_code == 0 and job.help.split()[0] in shown.output


@pytest.mark.parametrize("name", STEP_JOBS)
def test_submit_and_pipeline_build_the_same_config_as_the_class(name, tmp_path):
    """The same required values through `reid submit`'s parsing and a pipeline step give the
    config class's own defaults for everything else."""
    job = JOBS[name]
    values = _required(job, tmp_path)
    direct = job.config(**values)
    entry, submitted = parse_job_args(name, _argv(job, values))
    assert entry is job and submitted.model_dump() == direct.model_dump()
    inputs, outputs = locations(job, submitted)
    assert {k for k, _ in outputs} == {k for k in job.outputs if k in values}
    assert {k for k, _ in inputs} == {k for k in job.inputs if k in values}

    step = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[step]\njob = "{name}"\n{step}\n')
    [loaded] = load(PipelineConfig(file=str(pipeline)))
    assert loaded.entry is job and loaded.config.model_dump() == direct.model_dump()
    assert loaded.out == direct.out
    for field, info in job.config.model_fields.items():
        if info.default is not PydanticUndefined and field not in values:
            assert getattr(direct, field) == info.get_default(call_default_factory=True)


def test_a_pipeline_does_not_retrain_when_only_runtime_settings_change(tmp_path):
    train = JOBS["train"]
    assert {"workers", "cpus_per_worker", "address"} <= train.runtime
    assert "epochs" not in train.runtime and "p" not in train.runtime  # what it learns: identity
    archive = str(tmp_path / "arch")
    manifest.write_manifest(archive, "ingest", {}, [], {"rows": 1}, manifest.now())

    def step(extra: str) -> object:
        f = tmp_path / "p.toml"
        f.write_text(f'[train]\narchive = "{archive}"\nout = "{tmp_path}/model"\n{extra}\n')
        return load(PipelineConfig(file=str(f)))[0]

    first = step("workers = 1")
    manifest.write_manifest(first.out, "train", first.config.model_dump(), [archive], {}, manifest.now())
    assert staleness(first) is None
    assert staleness(step("workers = 2\ncpus_per_worker = 2.0\naddress = 'auto'")) is None
    assert staleness(step("workers = 2\np = 4")) == "config changed: p"
    assert staleness(step("epochs = 30")) == "config changed: epochs"  # a longer run: train again


def test_runtime_fields_are_declared_once_and_used_by_index_and_train():
    from jobs import index, train

    assert JOBS["index"].runtime == frozenset(index.RUNTIME)
    assert JOBS["train"].runtime == frozenset(train.RUNTIME)
    assert not hasattr(train, "RUNTIME_KEYS") and not hasattr(
        __import__("jobs.pipeline").pipeline, "EXECUTION_FIELDS"
    )


def test_old_spellings_still_work_hidden(tmp_path):
    _, ingest = parse_job_args("ingest", [str(tmp_path / "src"), str(tmp_path / "arch")])
    assert ingest.out == str(tmp_path / "arch")
    _, synth = parse_job_args("synth", [str(tmp_path / "s"), "--individuals", "2"])
    assert synth.out == str(tmp_path / "s") and synth.individuals == 2
    _, match = parse_job_args(
        "match", [str(tmp_path / "i"), "--out", str(tmp_path / "m"), "--no-exclude-self"]
    )
    assert match.exclude_self is False
    _, match = parse_job_args("match", [str(tmp_path / "i"), "--out", str(tmp_path / "m")])
    assert match.exclude_self is True
    with pytest.raises(ReidError, match=r"reid ingest: --out is given twice"):
        parse_job_args("ingest", [str(tmp_path / "src"), str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    params = {p.name: p for p in _click(JOBS["ingest"]).params}
    assert params["alias_out"].hidden and not params["out"].hidden


def test_no_job_imports_another_job():
    """Shared code lives in reid/ (domain) or cluster/ (Ray wiring), never in another job's module."""
    import ast
    import importlib

    job_modules = {job.module for job in JOBS.values()}
    for name in job_modules:
        source = importlib.import_module(name).__file__
        tree = ast.parse(Path(source).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not (imported & (job_modules - {name})), f"{name} imports {imported & job_modules}"


def test_train_settings_file_under_options_and_repeatable_params(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[train]\nepochs = 7\nloss = "arcface"\n')
    argv = [str(tmp_path / "a"), "--out", str(tmp_path / "m"), "--config", str(recipe)]
    _, cfg = parse_job_args(
        "train", [*argv, "--epochs", "3", "--loss-param", "margin=0.3", "--val-any-viewpoint"]
    )
    assert (cfg.epochs, cfg.loss, cfg.loss_params, cfg.val_same_viewpoint) == (
        3,
        "arcface",
        {"margin": 0.3},
        False,
    )
    _, cfg = parse_job_args("train", argv)
    assert (cfg.epochs, cfg.loss_params, cfg.val_same_viewpoint) == (7, {}, True)
