"""render.jsondoc: strictly valid JSON, fast for 10,000 layers, outer levels one entry per line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from bninspect.render.jsondoc import dumps


@dataclasses.dataclass
class Stats:
    mean: float
    values: np.ndarray
    _cache: object = None


def test_non_finite_numbers_become_strings_and_the_document_stays_strict_json():
    doc = dumps("t/1", {"layers": [Stats(float("nan"), np.array([np.inf, -np.inf, 1.5], dtype=np.float32))]})
    parsed = json.loads(doc, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert parsed == {"schema": "t/1", "layers": [{"mean": "NaN", "values": ["Infinity", "-Infinity", 1.5]}]}


def test_a_message_that_names_nan_is_kept_as_written():
    doc = dumps("t/1", {"notes": ["running_var has NaN at channel 3; Infinity elsewhere"], "n": np.int64(3)})
    assert json.loads(doc) == {"schema": "t/1", "notes": ["running_var has NaN at channel 3; Infinity elsewhere"], "n": 3}


def test_each_layer_is_one_line_and_private_fields_are_left_out():
    layers = [Stats(0.5, np.zeros(2)), Stats(1.0, np.ones(2))]
    lines = dumps("t/1", {"layers": layers, "summary": {"layers": 2}}).splitlines()
    assert lines[0] == "{" and lines[1] == '  "schema": "t/1",'
    assert '    {"mean": 0.5, "values": [0.0, 0.0]},' in lines
    assert '    "layers": 2' in lines
    assert "_cache" not in "".join(lines)
