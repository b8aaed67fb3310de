"""Declared schemas (pipeline/store/schema.py): damaged-but-valid-JSON report.json is refused, on
tests/fixtures/report.json (`real_report`, a real run's report): no training. Damaged stages.json, which `run`, `verify`
and `report` must refuse in a real run folder: tests/pipeline/store/test_manifest_damage.py."""
import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.store.schema import SchemaError, check_report


# ------------------------------------------------------------------ report.json, by hypothesis

POOL = [None, "x", "0.5", -1, 0, 2, 0.5, 1e308, 10**30, True, [], {}, [1.5], {"a": 1}]


def _mutate(data, node) -> None:
    """Walk down from the top (each level's keys equally likely, so top-level and deep fields are both hit
    often), then replace, or delete, the value reached."""
    while True:
        k = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
        child = node[k]
        if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and data.draw(st.integers(0, 3)) == 0:
            del node[k]
        else:
            node[k] = copy.deepcopy(data.draw(st.sampled_from(POOL)))  # never POOL's own list or dict: a later
            # mutation would change POOL itself, and hypothesis then fails with FlakyStrategyDefinition
        return


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_of_a_real_report_is_refused_or_renders(real_report, data):
    """Wrong types, nulls, deletions anywhere in a real report.json: the schema refuses it (one SchemaError,
    a PipelineError) or the report renders; never any other exception."""
    rep = copy.deepcopy(real_report)
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(data, rep)
    try:
        check_report(rep, "report.json")
    except SchemaError as e:
        assert "report.json is not a pipeline report" in str(e)
        return
    _render(rep)


def _paths(node, prefix=()):
    """Every path in the report (lists: their first two items), containers included."""
    items = node.items() if isinstance(node, dict) else list(enumerate(node))[:2] if isinstance(node, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _render(rep) -> None:
    """What `pipeline report` computes from a report that passed the schema: the recommendation (kept, or computed
    for a report without one), and the markdown (the HTML is drawn from it)."""
    from pipeline.report.assemble import complete
    from pipeline.report.markdown import render_markdown
    from pipeline.report.recommend import recommend

    render_markdown(complete(rep))
    recommend(rep)


def _refused_or_renders(rep) -> bool:
    try:
        check_report(rep, "report.json")
    except SchemaError:
        return True
    _render(rep)
    return False


def test_every_single_field_damaged_in_every_way_is_refused_or_renders(real_report):
    """Exhaustive: each path of a real report.json, deleted or set to each value of POOL (a few thousand
    reports). Never an exception other than the schema's; and most damage is refused."""
    base = real_report
    refused = total = 0
    for path in _paths(base):
        for value in [_DELETE, *POOL]:
            rep = copy.deepcopy(base)
            node = rep
            for k in path[:-1]:
                node = node[k]
            if value is _DELETE:
                if not isinstance(node, dict):
                    continue
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(value)
            total += 1
            refused += _refused_or_renders(rep)
    assert total > 2000 and refused > total / 2


_DELETE = object()


def test_schema_accepts_the_real_report_and_refuses_nonfinite_numbers(real_report):
    rep = real_report
    check_report(rep, "r")
    for bad in (math.nan, math.inf):
        rep["variants"][0]["accuracy_delta"] = bad
        with pytest.raises(SchemaError, match="variants.0.accuracy_delta: input should be a finite number"):
            check_report(rep, "r")


# ------------------------------------------------------------------ load_report: the one reader of report.json


def test_load_report_reads_a_real_report_and_refuses_the_rest_in_one_paragraph(real_report, tmp_path):
    """What `pipeline report`, `pipeline bundle` and `pipeline.run` read a report through: the checked dict, or a
    PipelineError that names the file and the problem and ends with the caller's advice."""
    from pipeline.errors import PipelineError
    from pipeline.store.schema import load_report
    from tests.conftest import REPORT_FIXTURE

    assert load_report(REPORT_FIXTURE) == real_report
    cases = {"missing.json": (None, "could not be read"),
             "latin1.json": (b'{"model": "\xe9"}', "is not a pipeline report (invalid JSON"),
             "nan.json": (json.dumps(real_report).replace('"cv": ', '"cv": NaN, "x": ', 1).encode(),
                          "is not a pipeline report (invalid JSON: NaN is not a JSON number"),
             "off.json": (json.dumps({**real_report, "params": "147290"}).encode(),
                          'does not match the report contract (docs/report.md, "Report contract"): params: input should '
                          'be a valid integer (got "147290")')}
    for name, (content, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(PipelineError) as e:
            load_report(tmp_path / name, then="Rerun it.")
        text = str(e.value)
        assert text.startswith(str(tmp_path / name)) and message in text and text.endswith(". Rerun it."), text
        assert "\n" not in text
