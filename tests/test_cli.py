"""The command line: explain, check and bench called in-process, and the refusal of bad geometry."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guarded import run_guarded

import anyconv
from anyconv.cli.main import main

EXPLAIN = ["explain", "--input-size", "7", "9", "--kernel-size", "3", "--stride", "2", "--padding", "1"]


def test_explain_prints_the_table_of_anyconv_explain(capsys):
    assert (
        main([*EXPLAIN, "--dilation", "2", "--channels", "3", "--out-channels", "8", "--dtype", "float64"])
        == 0
    )
    expected = anyconv.explain(
        (7, 9), 3, stride=2, padding=1, dilation=2, channels=3, out_channels=8, itemsize=8
    )
    assert capsys.readouterr().out == expected.table() + "\n"


def test_explain_reads_asymmetric_padding_and_same(capsys):
    assert main(["explain", "--input-size", "6", "5", "--kernel-size", "3", "--padding", "0,2", "1"]) == 0
    assert str(anyconv.explain((6, 5), 3, padding=((0, 2), 1))) in capsys.readouterr().out
    assert main(["explain", "--input-size", "6", "--kernel-size", "4", "--padding", "same"]) == 0
    assert str(anyconv.explain((6,), 4, padding="same")) in capsys.readouterr().out


def test_explain_draws_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fields.png"
    assert main([*EXPLAIN, "--png", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"drawn in {path}" in capsys.readouterr().out


def test_explain_without_matplotlib_prints_the_table_and_how_to_install(tmp_path, capsys, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*EXPLAIN, "--png", str(tmp_path / "fields.png")]) == 1
    captured = capsys.readouterr()
    assert "multiply-adds" in captured.out
    assert 'pip install "anyconv[plot]"' in captured.err
    assert not (tmp_path / "fields.png").exists()


REFUSALS = [
    dict(
        id="kernel-larger-than-padded",
        argv=["--input-size", "2", "2", "--kernel-size", "3"],
        says="kernel_size",
    ),
    dict(id="not-a-number", argv=["--input-size", "8", "x", "--kernel-size", "3"], says="--input-size x"),
    dict(
        id="zero-stride",
        argv=["--input-size", "8", "--kernel-size", "3", "--stride", "0"],
        says="stride=(0,)",
    ),
    dict(
        id="too-many-kernel-sizes", argv=["--input-size", "8", "--kernel-size", "3", "3"], says="kernel_size"
    ),
    dict(
        id="padding-triple",
        argv=["--input-size", "8", "--kernel-size", "3", "--padding", "1,2,3"],
        says="1,2,3",
    ),
    dict(
        id="negative-padding",
        argv=["--input-size", "8", "--kernel-size", "3", "--padding", "-1"],
        says="padding",
    ),
    dict(
        id="groups-not-dividing",
        argv=["--input-size", "8", "--kernel-size", "3", "--channels", "3", "--groups", "2"],
        says="groups=2",
    ),
    dict(
        id="reflect-too-wide",
        argv=["--input-size", "3", "--kernel-size", "3", "--padding", "3", "--padding-mode", "reflect"],
        says="reflect",
    ),
]


@pytest.mark.parametrize("command", ["explain", "check"])
@pytest.mark.parametrize("case", REFUSALS, ids=[case["id"] for case in REFUSALS])
def test_bad_geometry_is_refused_in_one_line(command, case, capsys):
    assert main([command, *case["argv"]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"anyconv {command}: error: ")
    assert case["says"] in captured.err


def test_the_real_command_refuses_without_a_traceback():
    environment = dict(os.environ, PYTHONPATH=str(Path(anyconv.__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "anyconv", "explain", "--input-size", "4", "4", "--kernel-size", "5"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "anyconv explain: error: kernel_size=(5, 5) is invalid: expected a kernel that fits the padded "
        "input: with dilation (1, 1) it spans (5, 5), the padded input is (4, 4)"
    ]


CHECKS = [
    dict(
        id="2d-torch-references",
        argv=[
            "--input-size",
            "7",
            "9",
            "--kernel-size",
            "3",
            "--stride",
            "2",
            "--padding",
            "1",
            "--dilation",
            "2",
            "--groups",
            "2",
        ],
    ),
    dict(id="2d-asymmetric", argv=["--input-size", "6", "6", "--kernel-size", "3", "--padding", "1,0", "2"]),
    dict(
        id="3d-circular",
        argv=[
            "--input-size",
            "5",
            "6",
            "4",
            "--kernel-size",
            "3",
            "2",
            "2",
            "--padding",
            "1",
            "--padding-mode",
            "circular",
            "--stride",
            "1",
            "2",
            "1",
        ],
    ),
    dict(
        id="4d-replicate-groups",
        argv=[
            "--input-size",
            "4",
            "5",
            "4",
            "3",
            "--kernel-size",
            "2",
            "--padding",
            "1",
            "0,1",
            "1",
            "0",
            "--padding-mode",
            "replicate",
            "--groups",
            "2",
        ],
    ),
    dict(
        id="1d-reflect",
        argv=["--input-size", "7", "--kernel-size", "3", "--padding", "1,2", "--padding-mode", "reflect"],
    ),
]


def _case_id(case):
    return case["id"]


@pytest.mark.parametrize("case", CHECKS, ids=_case_id)
def test_check_agrees_with_torch(case, capsys):
    assert main(["check", *case["argv"]]) == 0
    out = capsys.readouterr().out
    assert "anyconv.unfold " in out and "anyconv.fold" in out and "MISMATCH" not in out
    assert out.rstrip().endswith("OK: every largest difference is at most 1e-09")


def test_check_names_torch_references_in_2d(capsys):
    main(["check", *CHECKS[0]["argv"]])
    out = capsys.readouterr().out
    for check, reference in [
        ("anyconv.unfold", "F.unfold"),
        ("anyconv.fold", "F.fold"),
        ("anyconv.unfold + matmul", "F.conv2d"),
    ]:
        assert any(line.split("  ")[0].strip() == check and reference in line for line in out.splitlines())


@pytest.mark.skipif(not hasattr(anyconv, "conv"), reason="anyconv.conv is not in this version")
@pytest.mark.parametrize("case, reference", [(CHECKS[2], "F.conv3d"), (CHECKS[3], "loop unfold + matmul")])
def test_check_runs_anyconv_conv_against_a_reference(case, reference, capsys):
    assert main(["check", *case["argv"]]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("anyconv.conv ")]
    assert len(lines) == 1 and reference in lines[0] and lines[0].endswith("ok")


def test_check_reports_a_wrong_unfold(capsys, monkeypatch):
    correct = anyconv.unfold
    monkeypatch.setattr(anyconv, "unfold", lambda *args, **kwargs: correct(*args, **kwargs) * 1.001)
    assert main(["check", *CHECKS[1]["argv"]]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "FAILED" in out


def test_check_reports_a_failing_call_as_a_failed_check(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(anyconv, "fold", broken)
    assert main(["check", *CHECKS[1]["argv"]]) == 1
    assert "ERROR RuntimeError: broken on purpose" in capsys.readouterr().out


@pytest.fixture
def benchmarks(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    # where anyconv would be imported from, without paying for the import of torch
    (folder / "bench_a.py").write_text(
        "import importlib.util\nprint('a ran with', importlib.util.find_spec('anyconv').origin)\n"
    )
    (folder / "bench_b.py").write_text("import sys\nprint('b ran')\nsys.exit(3)\n")
    (folder / "helper.py").write_text("raise SystemExit('not a benchmark')\n")
    return folder


def test_bench_runs_each_script_and_reports_failures(benchmarks, capsys):
    assert main(["bench", "--directory", str(benchmarks)]) == 1
    captured = capsys.readouterr()
    package = str(Path(anyconv.__file__))
    assert f"a ran with {package}" in captured.out and "b ran" in captured.out
    assert "not a benchmark" not in captured.out
    assert (
        captured.out.index("== bench_a.py")
        < captured.out.index("a ran")
        < captured.out.index("== bench_b.py")
    )
    assert "failed: bench_b.py (exit 3)" in captured.err


def test_bench_selects_by_name_and_lists(benchmarks, capsys):
    assert main(["bench", "a", "--directory", str(benchmarks)]) == 0
    assert "b ran" not in capsys.readouterr().out
    assert main(["bench", "--list", "--directory", str(benchmarks)]) == 0
    assert capsys.readouterr().out.split() == ["bench_a.py", "bench_b.py"]


def test_bench_counts_without_tqdm(benchmarks, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert main(["bench", "--directory", str(benchmarks)]) == 1
    captured = capsys.readouterr()
    assert "[1/2] bench_a.py" in captured.err and "[2/2] bench_b.py" in captured.err


def test_bench_finds_benchmarks_in_the_working_directory(benchmarks, capsys, monkeypatch):
    monkeypatch.chdir(benchmarks.parent)
    assert main(["bench", "--list"]) == 0
    assert "bench_a.py" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--directory", "/nonexistent"], "not a folder"),
        (["zzz"], "no benchmark script bench_*.py matching zzz"),
    ],
)
def test_bench_refuses_in_one_line(benchmarks, argv, says, capsys):
    if "--directory" not in argv:
        argv = [*argv, "--directory", str(benchmarks)]
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_demo_is_still_there(capsys):
    assert main(["demo"]) == 0
    assert "OK" in capsys.readouterr().out


# Resources: the command never hangs, never draws without bound, and refuses in one line (exit 2)
# what it cannot do. Calls that could hang or exhaust memory run in a guarded child process.

CLI_CHILD = """
import sys
from anyconv.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _guarded_cli(*argv: str, timeout: float = 60):
    return run_guarded(CLI_CHILD, timeout=timeout, args=argv)


def _one_line_refusal(result, command: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"anyconv {command}: error: "), result.stderr
    return lines[0]


def test_explain_with_a_huge_padding_answers_at_once():
    start = time.perf_counter()
    result = _guarded_cli("explain", "--input-size", "8", "--kernel-size", "3", "--padding", str(10**12))
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.perf_counter() - start < 30
    assert "2,000,000,000,006" in result.stdout  # the number of fields
    assert "fold(unfold(x))" in result.stdout and "not counted" in result.stdout


def test_explain_refuses_sizes_no_tensor_can_have():
    result = _guarded_cli("explain", "--input-size", "8", "8", "--kernel-size", "3", "--padding", str(10**12))
    line = _one_line_refusal(result, "explain")
    assert "padding=" in line and "more than" in line


def test_explain_png_of_a_huge_input_draws_a_bounded_window(tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    path = tmp_path / "fields.png"
    result = _guarded_cli(
        "explain",
        "--input-size",
        "100000",
        "100000",
        "--kernel-size",
        "3",
        "--padding",
        "1",
        "--png",
        str(path),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    height, width = matplotlib_image.imread(path).shape[:2]
    assert height <= 2000 and width <= 2000
    assert "part of the padded input" in result.stdout


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_explain_refuses_an_unwritable_png_path_in_one_line(where, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "missing" / "fields.png" if where == "missing-folder" else tmp_path
    result = _guarded_cli(*EXPLAIN, "--png", str(path))
    line = _one_line_refusal(result, "explain")
    assert f"--png {path}" in line


def test_check_refuses_tensors_larger_than_memory_in_one_line():
    result = _guarded_cli(
        "check", "--input-size", "100000", "100000", "--kernel-size", "3", "--channels", "64"
    )
    line = _one_line_refusal(result, "check")
    assert "more than" in line


@pytest.mark.parametrize(
    "failure",
    [
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"),
    ],
    ids=["MemoryError", "torch-allocator"],
)
def test_check_reports_an_allocation_failure_in_one_line_not_as_a_mismatch(failure, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise failure

    monkeypatch.setattr(anyconv, "fold", out_of_memory)
    assert main(["check", *CHECKS[1]["argv"]]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("anyconv check: error: ") and "memory" in lines[0]
