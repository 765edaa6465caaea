"""Claims whose value was not reached, and the claims.json schema (issue 16)."""

import json
import math

import pytest

from learning_dynamics import claims


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_value_not_finite_is_a_failed_claim_not_an_error(value):
    made = [claims.below("half time error", value, 0.05), claims.above("distance", value, 0.01),
            claims.close("ratio", value, 1.0, rtol=0.1), claims.fraction("monotone", []),
            claims.below("known", value, 0.05, known_discrepancy="why")]
    for c in made:
        assert not c.reached and not c.passed and not c.ok
        assert c.status == "not reached" and c.label == "not reached in this run"
    assert claims.fraction("monotone", []).tolerance == "all 0"


def test_not_reached_is_shown_recorded_and_raised(capsys):
    table = [claims.below("err", 0.1, 1.0), claims.below("half times", math.nan, 0.05, figure="fig-a")]
    markdown = claims.table_markdown(table)
    assert "| half times | < 0.05 | nan | < 0.05 | not reached in this run | {numref}`fig-a` |" in markdown
    assert "not reached in this run" in claims.table_text(table)
    records = claims.to_records(table)
    assert records[1]["ours"] is None and records[1]["status"] == "not reached" and records[1]["passed"] is False
    text = json.dumps({"chapter": "demo", "claims": records})  # strict JSON: no NaN
    assert "NaN" not in text
    rebuilt = claims.from_glued(json.loads(text))
    assert rebuilt[0] == table[0] and rebuilt[1].status == "not reached" and math.isnan(rebuilt[1].ours)
    assert claims.rounded(None) == "nan"
    with pytest.raises(claims.ClaimFailed, match="half times: not reached"):
        claims.report(table, "demo")


def test_report_shows_the_table_before_raising(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    with pytest.raises(claims.ClaimFailed):
        claims.report([claims.below("err", 2.0, 1.0)], "demo")
    assert len(shown) == 1 and "FAIL" in shown[0].data


def test_passing_tables_are_unchanged():
    table = [claims.below("err", 0.1, 1.0), claims.close("x", 2.0, 1.0, rtol=0.01, known_discrepancy="why")]
    assert claims.table_markdown(table).splitlines()[2:] == [
        "| err | < 1 | 0.1 | < 1 | pass |  |",
        "| x | 1 | 2 | rel 0.01 | does not reproduce: why |  |",
    ]


def _glued(**changes):
    record = claims.to_records([claims.below("err", 0.1, 1.0)])[0]
    record.update(changes)
    return {"chapter": "demo", "claims": [record]}


SCHEMA_ERRORS = [
    ([], "expected an object"),
    ({"claims": []}, "field 'chapter' must be a non-empty string"),
    ({"chapter": "demo"}, "field 'claims' must be a list"),
    ({"chapter": "demo", "claims": []}, "field 'claims' is empty"),
    ({"chapter": "demo", "claims": [3]}, "claims[0] must be an object"),
    (_glued(passed="yes"), "claims[0].passed must be true or false; got str 'yes'"),
    (_glued(passed=1), "claims[0].passed must be true or false"),
    (_glued(machine_dependent=None), "claims[0].machine_dependent must be true or false"),
    (_glued(status="ok"), "claims[0].status must be one of 'pass', 'FAIL'"),
    (_glued(ours="0.1"), "claims[0].ours must be a number"),
    (_glued(ours=True), "claims[0].ours must be a number"),
    (_glued(statement=7), "claims[0].statement must be a string"),
    (_glued(status="FAIL"), "recorded status 'FAIL' but passed=true gives 'pass'"),
    (_glued(ours=None), "claims[0].passed is true but ours is None"),
    (_glued(ours=None, passed=False), "recorded status 'pass' but passed=false gives 'not reached'"),
]


@pytest.mark.parametrize("glued,message", SCHEMA_ERRORS)
def test_schema_errors_name_the_field(glued, message):
    with pytest.raises(ValueError) as err:
        claims.from_glued(glued)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_fields_are_named():
    glued = _glued()
    del glued["claims"][0]["figure"], glued["claims"][0]["status"]
    with pytest.raises(ValueError, match=r"claims\[0\] \('err'\) lacks field figure, status"):
        claims.from_glued(glued)
    assert claims.from_glued(_glued(ours=None, passed=False, status="not reached"))[0].status == "not reached"
