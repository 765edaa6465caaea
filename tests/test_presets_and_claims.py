"""Presets validate their parameters; claims are real checks that can fail."""

import gc
import json

import matplotlib as mpl
import pytest

from conftest import ROOT
from learning_dynamics import claims, presets


@pytest.mark.parametrize("chapter", presets.chapters())
@pytest.mark.parametrize("size", presets.PRESET_NAMES)
def test_every_registered_preset_is_valid(chapter, size):
    cfg = presets.resolve(chapter, size, seed=2)
    assert cfg.preset == size and cfg.seed == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(preset="huge"), "preset must be one of"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(seed=-1), "seed must be"),
    (dict(device="tpu"), "device must be"),
    (dict(overrides={"lr": -1}), "lr must be"),
    (dict(overrides={"lr": "fast"}), "lr must be a real number"),
    (dict(overrides={"n_seeds": 2.5}), "n_seeds must be an integer"),
    (dict(overrides={"learning_rate": 0.1}), "unknown parameter 'learning_rate'"),
])
def test_bad_parameters_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        presets.resolve("feedback_principle", **kwargs)


@pytest.mark.parametrize("chapter,overrides,match", [
    ("neural_race", {"race_shown": 5}, r"race_shown must be one of race_contexts \(1, 2, 3, 4, 6, 8\); got 5"),
    ("kpflow", {"tail_index": 21}, "tail_index must be at most spectrum_k = 20"),
])
def test_fields_that_depend_on_each_other_are_checked_together(chapter, overrides, match):
    with pytest.raises(ValueError, match=match):
        presets.resolve(chapter, "book", overrides=overrides)


def test_unknown_chapter():
    with pytest.raises(ValueError, match="chapter must be one of"):
        presets.resolve("nope")


def test_start_chapter_resolves_styles_and_freezes_the_imports():
    from learning_dynamics import plotting

    mpl.rcParams["font.size"] = 20.0
    try:
        cfg = presets.start_chapter("kpflow", "smoke", seed=3, overrides={"hidden": 8})
        assert cfg == presets.resolve("kpflow", "smoke", seed=3, overrides={"hidden": 8})
        assert mpl.rcParams["font.size"] == plotting.STYLE["font.size"]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        mpl.rcdefaults()
    with pytest.raises(ValueError, match="preset must be one of"):
        presets.start_chapter("kpflow", "huge")


def test_fields_describe_their_range():
    fields = presets.fields_of("feedback_principle")
    assert fields["lr"].startswith("a finite real number > 0.0: ")


def test_claim_constructors_pass_and_fail():
    assert claims.close("x", 1.01, 1.0, rtol=0.02).passed
    assert not claims.close("x", 1.05, 1.0, rtol=0.02).passed
    assert claims.below("x", 0.1, 1).passed and not claims.below("x", 2, 1).passed
    assert claims.above("x", 2, 1).passed and not claims.above("x", 0.5, 1).passed
    assert claims.fraction("x", [True, True]).passed and not claims.fraction("x", [True, False]).passed
    assert claims.fraction("x", [True] * 12).tolerance == "all 12"
    assert claims.fraction("x", [True, False], need=0.5).tolerance == ">= 50% of 2"
    assert claims.below("x", float("nan"), 1).status == "not reached"  # undefined for these parameters: a failure


def test_known_discrepancy_is_strict():
    failing = claims.close("x", 2.0, 1.0, rtol=0.01, known_discrepancy="why")
    passing = claims.close("x", 1.0, 1.0, rtol=0.01, known_discrepancy="why")
    assert failing.ok and failing.status == "does not reproduce"
    assert not passing.ok and passing.status == "unexpectedly passes"


def test_report_raises_on_failure_and_glues_json(capsys):
    good = [claims.below("err", 0.1, 1.0, figure="fig-a")]
    claims.report(good, "demo")
    with pytest.raises(claims.ClaimFailed, match="err"):
        claims.report([claims.below("err", 2.0, 1.0)], "demo")
    records = claims.to_records(good)
    assert json.loads(json.dumps(records))[0]["status"] == "pass"


def test_markdown_table_escapes_pipes():
    table = claims.table_markdown([claims.below("|x| small", 0.1, 1.0)])
    assert "\\|x\\|" in table


def test_machine_dependent_values_are_marked_and_masked_for_nbval():
    import configparser
    import re

    from learning_dynamics import claims

    table = [claims.below("ReLU's float32 result", -0.2254, 0.0, machine_dependent=True), claims.below("float64", 0.5, 1.0)]
    text = claims.table_markdown(table) + "\n" + repr(__import__("json").dumps({"claims": claims.to_records(table)}))
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tests" / "sanitize.cfg", encoding="utf-8")
    for section in cfg.sections():
        text = re.sub(cfg[section]["regex"], cfg[section]["replace"], text)
    assert "-0.225" not in text and "MACHINE" in text and "| 0.5 |" in text and '"ours": 0.5' in text
    assert claims.from_records(claims.to_records(table)) == table
