"""utils/: the one atomic writer, the one set of checks and value parser, the one percentile method.

Percentiles against numpy's default (linear) method to 1e-12; the writer leaves the old file whole and no
temporary file when the write fails; the checks' messages name the argument, the value and what is expected.
"""
import os

import numpy as np
import pytest

from utils.checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_int_list,
    check_number,
    check_probability,
    parse_value,
)
from utils.io import atomic_write, write_json, write_text
from utils.stats import percentile


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_is_numpys_linear_method(q):
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        xs = rng.normal(size=n).tolist()
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-12)


def test_percentile_of_nothing_is_refused():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}\n'

    def fails(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, fails)
    assert path.read_text() == '{\n  "x": 1\n}\n'  # the old content, whole
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left
    write_text(tmp_path / "sub" / "b.txt", "text")  # makes the folder
    assert (tmp_path / "sub" / "b.txt").read_text() == "text"


@pytest.mark.parametrize("call, message", [
    (lambda: check_int("batch_size", 0), "batch_size must be a positive integer, got 0"),
    (lambda: check_int("workers", -1, low=0), "workers must be a non-negative integer, got -1"),
    (lambda: check_int("seed", 2**32, low=0, high=2**32 - 1), "seed must be an integer in [0, 4294967295], got 4294967296"),
    (lambda: check_int("dim", True), "dim must be a positive integer, got True"),
    (lambda: check_int("dim", 3.0), "dim must be a positive integer, got 3.0"),
    (lambda: check_int("k", 1, low=2), "k must be an integer >= 2, got 1"),
    (lambda: check_int_list("dilations", 2), "dilations must be a non-empty list of positive integers, got 2"),
    (lambda: check_int_list("dilations", [1, 0]), "dilations must be a non-empty list of positive integers, got [1, 0]"),
    (lambda: check_number("lr", float("nan"), 0, low_open=True), "lr must be a finite number > 0, got nan"),
    (lambda: check_number("x", "1"), "x must be a finite number, got '1'"),
    (lambda: check_fraction("hole", 1.0, low_open=True), "hole must be a number in (0, 1), got 1.0"),
    (lambda: check_probability("dropout", 1.5), "dropout must be a number in [0, 1), got 1.5"),
    (lambda: check_bool("ortho", "no"), "ortho must be True or False, got 'no'"),
    (lambda: check_choice("mask", "circle", ("center", "boxes")), "mask must be one of center, boxes, got 'circle'"),
    (lambda: check_choice("mask", None, ("center",)), "mask must be one of center, got None"),
])
def test_checks_name_the_argument_the_value_and_what_is_expected(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_checks_return_the_value():
    assert check_int("n", np.int64(4)) == 4 and isinstance(check_int("n", np.int64(4)), int)
    assert check_int_list("d", (1, 2)) == (1, 2)
    assert check_number("x", 2) == 2.0 and check_fraction("f", 0.0) == 0.0 and check_probability("p", 0.5) == 0.5
    assert check_bool("b", False) is False and check_choice("c", "a", ("a",)) == "a"


@pytest.mark.parametrize("text, value", [
    ("128", 128), ("0.5", 0.5), ("true", True), ("False", False), ("none", None), ("NULL", None),
    ("(1, 2)", (1, 2)), ("'x'", "x"), ("hello", "hello"), ("1e3", 1000.0), ("[1,", "[1,"),
])
def test_parse_value(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)
