"""Edges of the command line: output paths that cannot be written are refused before any
work, with one line naming the option and nothing left behind; options out of range get
one line naming the option."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from simia.cli import main

CONVERSE_COMMANDS = ("generate-seeds", "generate", "judge", "collect", "twins")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """simia.cli.main in process: (exit status, stdout, stderr); argparse's exit too."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def assert_one_line_error(err: str, command: str, *words: str) -> None:
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, err
    assert line.startswith(f"simia {command}: error: "), err
    for word in words:
        assert word in line, (word, err)


@pytest.fixture()
def unwritable(tmp_path: Path) -> Path:
    """A folder nothing can be written in: a read-only one, or (as root, whom permission
    bits do not stop) /sys, a read-only mount."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    candidates = [folder, Path("/sys")]
    for candidate in candidates:
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            yield candidate
            break
        os.close(fd)
        os.unlink(probe)
    else:
        pytest.skip("no unwritable folder here (root, and /sys is writable)")
    folder.chmod(0o755)


def _argv(command: str, out: str, tmp_path: Path) -> list[str]:
    """A command line of ``command`` writing to ``out``; the inputs need not exist (the
    output is checked first)."""
    inp = str(tmp_path / "input.json")
    llm = ["--endpoint-url", "http://127.0.0.1:9"]
    return {
        "process": ["process", inp, "-o", out],
        "score-rules": ["score-rules", inp, "-o", out],
        "build-datasets": ["build-datasets", "--conversations", inp, "--scores", inp, "-o", out],
        "generate-seeds": ["generate-seeds", "-o", out, *llm],
        "generate": ["generate", "--seeds", inp, "-o", out, *llm],
        "judge": ["judge", inp, "-o", out, *llm],
        "collect": ["collect", "--seeds", inp, "-o", out, *llm],
        "twins": ["twins", "--conversations", inp, "--scores", inp, "-o", out, "--needed", "2",
                  *llm],
        "train-config": ["train-config", "--datasets", inp, "--level", "10", "-o", out],
        "commands": ["commands", str(tmp_path), "-o", out],
        "analyze": ["analyze", f"0:1={inp}", "-o", out],
        "report": ["report", str(tmp_path), "-o", out],
    }[command]


_DIR_OUTPUTS = {"process": "-o/--out-dir", "build-datasets": "-o/--out-dir",
                "generate-seeds": "-o/--out-dir", "generate": "-o/--out-dir",
                "judge": "-o/--out-dir", "collect": "-o/--run-dir", "twins": "-o/--out-dir",
                "report": "-o/--out-dir"}
_FILE_OUTPUTS = {"score-rules": "-o/--out", "train-config": "-o/--out",
                 "commands": "-o/--out", "analyze": "-o/--out"}


@pytest.mark.parametrize("command", sorted({**_DIR_OUTPUTS, **_FILE_OUTPUTS}))
@pytest.mark.parametrize("case", ["existing", "under_a_file", "unwritable"])
def test_an_output_that_cannot_be_written_is_refused_first(command, case, tmp_path, capsys,
                                                          request):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    option = _DIR_OUTPUTS.get(command) or _FILE_OUTPUTS[command]
    if case == "existing":  # a folder output that is a file, a file output that is a folder
        out, words = ((a_file, "is an existing file, expected a folder")
                      if command in _DIR_OUTPUTS else
                      (a_dir, "is an existing folder, expected a file"))
    elif case == "under_a_file":
        out, words = a_file / "sub" / "out.json", f"{a_file} is a file, not a folder"
    else:
        folder = request.getfixturevalue("unwritable")
        out, words = folder / "new" / "out.json", f"cannot write in {folder}"
    before = files_under(tmp_path)
    rc, stdout, err = run_main(_argv(command, str(out), tmp_path), capsys)
    assert rc == 2 and stdout == ""
    assert_one_line_error(err.splitlines()[-1] if err else "", command, option, str(out), words)
    assert files_under(tmp_path) == before
    assert a_file.read_text() == "keep me\n"


@pytest.mark.parametrize("command", CONVERSE_COMMANDS)
def test_llm_commands_make_no_call_when_the_output_is_a_file(command, converse_server,
                                                             tmp_path, capsys):
    """The output is checked before the client is made: the server sees nothing."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = _argv(command, str(a_file), tmp_path)
    argv[argv.index("--endpoint-url") + 1] = converse_server.url
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and "is an existing file" in err
    assert converse_server.stats["requests"] == 0


def test_process_refuses_an_output_under_a_file_before_processing(raw_file, tau2_dir, tmp_path,
                                                                  capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    rc, _, err = run_main(["process", str(raw_file), "-o", str(a_file / "out"),
                           "--tau2-data-dir", str(tau2_dir)], capsys)
    assert rc == 2
    assert_one_line_error(err, "process", f"{a_file} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_report_default_folder_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "report").write_text("")
    rc, _, err = run_main(["report", str(tmp_path)], capsys)
    assert rc == 2
    assert_one_line_error(err, "report", "the report folder", "is an existing file")


@pytest.mark.parametrize("argv, option, words", [
    (["report", "OUT", "--resamples", "0"], "--resamples", "must be >= 1, got 0"),
    (["generate", "--seeds", "s", "-o", "OUT", "--shards", "0"], "--shards", ">= 1"),
    (["judge", "c", "-o", "OUT", "--tries", "0"], "--tries", ">= 1"),
    (["generate", "--seeds", "s", "-o", "OUT", "--call-attempts", "-2"], "--call-attempts",
     ">= 1"),
    (["twins", "--conversations", "c", "--scores", "s", "-o", "OUT", "--needed", "0"],
     "--needed", ">= 1"),
    (["twins", "--conversations", "c", "--scores", "s", "-o", "OUT", "--needed", "1",
      "--budget-usd", "-5"], "--budget-usd", "> 0"),
    (["plan-power", "--max-replicates", "1"], "--max-replicates", ">= 2"),
    (["plan-power", "--tasks", "x"], "--tasks", "expected an integer, got 'x'"),
    (["train-config", "--datasets", "d", "--level", "0", "-o", "OUT/c.yaml", "--replicate",
      "0"], "--replicate", ">= 1"),
])
def test_an_option_out_of_range_gets_one_line_naming_it(argv, option, words, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    rc, out, err = run_main(argv, capsys)
    assert rc == 2 and out == ""
    assert_one_line_error(err, argv[0], f"argument {option}", words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, words", [
    ("generate --seeds s -o {out} --target 0",
     ["--target: Input should be greater than or equal to 1 (got 0)"]),
    ("generate --seeds s -o {out} --concurrency 0 --endpoint-url http://127.0.0.1:9",
     ["--concurrency: ", "(got 0)"]),
    ("train-config --datasets {ds} --level 10 -o {out}/c.yaml --learning-rate -1 "
     "--cutoff-len 0",
     ["--learning-rate: Input should be greater than 0 (got -1.0)", "; --cutoff-len: "]),
])
def test_a_setting_out_of_range_names_its_option_on_one_line(argv, words, tmp_path, capsys,
                                                             datasets_dir):
    args = argv.format(out=tmp_path / "out", ds=datasets_dir).split()
    rc, out, err = run_main(args, capsys)
    assert rc == 2 and out == ""
    assert_one_line_error(err, args[0], *words)
    assert "validation error" not in err and "errors.pydantic.dev" not in err


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory, raw_file, tau2_dir) -> Path:
    from simia.data.stages import build_datasets_stage, process_stage, score_rules_stage
    from simia.settings import DatasetDesign

    tmp = tmp_path_factory.mktemp("edges_ds")
    process_stage(raw_file, tmp / "processed", tau2_data_dir=tau2_dir)
    score_rules_stage(tmp / "processed" / "processed.json", tmp / "scores.jsonl")
    build_datasets_stage(tmp / "processed" / "processed.json", tmp / "scores.jsonl",
                         tmp / "datasets", DatasetDesign(levels=(0, 10), size=20,
                                                          shared_clean=15))
    return tmp / "datasets"


def test_train_config_into_a_folder_writes_nothing(datasets_dir, tmp_path, capsys):
    """``-o DIR`` used to write DIR/../deepspeed.json, then fail on the YAML."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    rc, _, err = run_main(["train-config", "--datasets", str(datasets_dir), "--level", "10",
                           "-o", str(folder)], capsys)
    assert rc == 2
    assert_one_line_error(err, "train-config", "is an existing folder, expected a file")
    assert files_under(tmp_path) == {folder}
    rc, out, _ = run_main(["train-config", "--datasets", str(datasets_dir), "--level", "10",
                           "-o", str(folder / "c.yaml")], capsys)
    assert rc == 0 and json.loads(out)["deepspeed"] == str(folder / "deepspeed.json")
