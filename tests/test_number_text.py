"""raysl.console.format_number: the one number formatter of the scaling and transfer texts, reports and plots
(raysl.scaling_text, raysl.scaling_stored and raysl.transfer each use it, with their own settings)."""

from __future__ import annotations

import numpy as np
import pytest

from raysl import scaling_stored, scaling_text, transfer
from raysl.console import format_number

CASES = [0, 1e-5, 123456.789, 123456, -123456, -2.5, float("nan"), float("inf"), -float("inf"), None, True,
         np.float64("nan"), np.int64(123456)]


def test_format_number_pins_its_text():
    # default (the scaling fits' text): 4 significant digits, an int too; "-" for None and a non-finite float
    assert [format_number(x) for x in CASES] == [
        "0", "1e-05", "1.235e+05", "1.235e+05", "-1.235e+05", "-2.5", "-", "-", "-", "-", "1", "-", "1.235e+05"]
    # exact_ints (the scaling report's tables and plots): an int in full, numpy's too (not a bool)
    assert [format_number(x, exact_ints=True) for x in CASES] == [
        "0", "1e-05", "1.235e+05", "123456", "-123456", "-2.5", "-", "-", "-", "-", "1", "-", "123456"]
    assert format_number(123456.789, 3, exact_ints=True) == "1.23e+05"
    assert format_number(123456.789, 6) == "123457"
    # others_as_str (a transfer experiment's text): a bool, a str, a numpy int as str()
    assert [format_number(x, others_as_str=True) for x in CASES] == [
        "0", "1e-05", "1.235e+05", "1.235e+05", "-1.235e+05", "-2.5", "-", "-", "-", "-", "True", "-", "123456"]
    assert format_number("adamw", others_as_str=True) == "adamw"
    with pytest.raises(ValueError):
        format_number("adamw")


def test_the_three_texts_use_it():
    assert scaling_text._g is format_number
    for x in CASES:
        assert scaling_stored._g(x) == format_number(x, exact_ints=True)
        assert scaling_stored._g(x, 3) == format_number(x, 3, exact_ints=True)
        assert transfer._g(x) == format_number(x, others_as_str=True)
