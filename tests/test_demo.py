"""anyconv demo: trains on the real digits, prints the table, draws the curves; bad options refused."""

import re

import pytest

from anyconv.cli import demo, training
from anyconv.cli.digits import load_digits_split
from anyconv.cli.main import main

TABLE_ROW = re.compile(
    r"^\| (?P<variant>[^|]+) \| (?P<accuracy>[\d.]+) % \| (?P<seconds>[\d.]+) \| (?P<memory>[^|]+) \|$"
)


def test_quick_demo_prints_table_above_chance_and_plots(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    status = main(["demo", "--epochs", "2", "--limit", "500", "--batch-size", "16", "--plot", str(plot)])
    output = capsys.readouterr().out
    assert status == 0, output
    assert "OK" in output  # the recipe check ran first
    rows = [match.groupdict() for line in output.splitlines() if (match := TABLE_ROW.match(line))]
    assert [row["variant"] for row in rows] == ["standard", "l1 adder_grad=True"]
    assert float(rows[0]["accuracy"]) > 20.0, rows  # chance is 10 %
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 100 and float(row["seconds"]) > 0 and "MiB" in row["memory"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_l1_learns_above_chance_in_process():
    digits = load_digits_split(limit=400)
    config = training.RunConfig("l1", {"adder_grad": True}, epochs=4, batch_size=8, progress=False)
    assert training.train(config, digits).test_accuracy[-1] > 0.25  # chance is 0.1


def test_training_is_reproducible_in_process():
    digits = load_digits_split(limit=120)
    config = training.RunConfig(variant="dot", epochs=1, limit=120, progress=False)
    first, second = training.train(config, digits), training.train(config, digits)
    assert first.train_loss == second.train_loss and first.test_accuracy == second.test_accuracy


def test_check_only_runs_the_recipe_check(capsys):
    assert main(["demo", "--check-only"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "nope"], "variant='nope' is invalid"),
        (["--variant", "l1", "--option", "gamma=2"], "gamma=2.0 is not an option of variant 'l1'"),
    ],
    ids=["unknown-variant", "unknown-option"],
)
def test_bad_variant_refused_before_training(argv, message, capsys):
    assert main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_extras_explained(monkeypatch, capsys):
    monkeypatch.setattr(demo, "available", lambda module: module != "matplotlib")
    assert main(["demo", "--plot", "x.png"]) == 2
    assert "--plot needs matplotlib: pip install 'anyconv[demo]'" in capsys.readouterr().err
    monkeypatch.setattr(demo, "available", lambda module: False)
    assert main(["demo"]) == 2
    assert "needs scikit-learn" in capsys.readouterr().err


def test_plain_progress_without_tqdm(monkeypatch, capsys):
    monkeypatch.setattr(training, "available", lambda module: False)
    digits = load_digits_split(limit=60)
    training.train(training.RunConfig(variant="dot", epochs=1), digits)
    assert "epoch 1/1: loss" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["adder_grad", "=1", ""])
def test_option_must_be_name_equals_value(text):
    with pytest.raises(Exception, match="is not NAME=VALUE"):
        demo.variant_option(text)
