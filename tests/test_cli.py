"""The command line: help for every command, version, and one-sentence errors."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from affbench.cli import app
from affbench.runtime.version import __version__


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


COMMANDS = [path for path, _ in all_commands(app)]


def test_the_command_tree_of_the_design():
    assert {p[0] for p in COMMANDS} >= {"prepare", "run-benchmark", "export", "demo", "sample-data", "list"}
    assert {p[1] for p in COMMANDS if p[0] == "prepare" and len(p) == 2} == {"disfa", "bp4d", "caer-s", "affwild2"}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_and_option_has_help(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    command = app
    for name in path:
        command = command.commands[name]
    assert command.help and len(command.help.split()) >= 5
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
            assert param.opts[0] in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_list_datasets():
    result = CliRunner().invoke(app, ["list", "datasets"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == ["disfa", "bp4d", "caer-s", "affwild2"]


def test_user_errors_are_one_sentence_without_traceback(tmp_path):
    (tmp_path / "disfa").mkdir()
    (tmp_path / "disfa" / "keep.txt").write_text("x")
    result = subprocess.run(
        [sys.executable, "-P", "-m", "affbench.cli", "sample-data", str(tmp_path), "--datasets", "disfa"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_sample_data_command_writes_the_layouts(tmp_path):
    result = CliRunner().invoke(app, ["sample-data", str(tmp_path), "--datasets", "affwild2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "affwild2" / "cropped_aligned").is_dir()
    assert not (tmp_path / "disfa").exists()


@pytest.mark.parametrize("dataset, label", [("disfa", "DISFA"), ("bp4d", "BP4D"), ("caer-s", "CAER-S"),
                                            ("affwild2", "Aff-Wild2")])
def test_a_file_given_as_root_is_named_a_file(tmp_path, dataset, label):
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    result = CliRunner().invoke(app, ["prepare", dataset, str(tmp_path / "passwd"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == (f"Error: The {label} root {tmp_path / 'passwd'} is a file, not a folder; give the "
                                     "folder that holds the dataset.")


def test_demo_into_a_file_names_the_option(tmp_path):
    (tmp_path / "notes").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "notes")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"--out {tmp_path / 'notes'} is a file" in result.output and "raw" not in result.output
    assert (tmp_path / "notes").read_text() == "mine"


def test_list_encoders_shows_each_encoders_options():
    result = CliRunner().invoke(app, ["list", "encoders"])
    assert result.exit_code == 0
    assert "options: n_classes=7, input_size=96, dropout=0.5" in result.output
    assert result.output.count("options: ") == len([n for n in result.output.splitlines() if n and n[0] != " "]) - 1


@pytest.mark.parametrize("args, message", [
    (["run-benchmark", "--suite", "demo", "--data", "{tmp}/notes.txt", "--out", "{tmp}/run"],
     "The data folder {tmp}/notes.txt is a file"),
    (["export-model", "--encoder", "fan-au", "--pretrained", "{tmp}/notes.txt", "--labels", "a", "--option",
      'aus=[1, "x"]', "--out", "{tmp}/m.pt"], "Encoder 'fan-au': option aus must be an integer of at least 1; got 'x'."),
])
def test_more_user_mistakes_are_one_sentence(tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert message.format(tmp=tmp_path) in result.output


@pytest.mark.parametrize("dataset", ["disfa", "bp4d", "caer-s", "affwild2"])
def test_prepare_uses_every_core_by_default(dataset):
    command = app.commands["prepare"].commands[dataset]
    workers = next(p for p in command.params if p.name == "workers")
    assert workers.default == "auto"
    assert workers.type.convert("auto", workers, None) == "auto" and workers.type.convert("3", workers, None) == 3


@pytest.mark.parametrize("value", ["0", "lots", "1.5", "257"])
def test_a_bad_worker_count_is_refused_before_any_work(tmp_path, value):
    result = CliRunner().invoke(app, ["prepare", "affwild2", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--workers", value])
    assert result.exit_code == 2 and "is not 'auto' or a whole number from 1 to 256" in result.output
    assert not (tmp_path / "o").exists()
