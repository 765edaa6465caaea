"""Every preset field's declaration generates its own bad-input test; resources are checked before any work."""

from __future__ import annotations

import dataclasses
import time

import pytest

from learning_dynamics import presets

FIELDS = [(chapter, f) for chapter in presets.chapters()
          for f in dataclasses.fields(presets._REGISTRY[chapter][0]) if "constraint" in f.metadata and f.name != "seed"]


@pytest.mark.parametrize("chapter, field", FIELDS, ids=[f"{c}.{f.name}" for c, f in FIELDS])
def test_each_declared_field_rejects_its_invalid_example(chapter, field):
    bad = field.metadata["constraint"].invalid_example()
    with pytest.raises(ValueError) as err:
        presets.resolve(chapter, "smoke", overrides={field.name: bad})
    assert str(err.value).startswith((f"{field.name} ", f"{field.name}[")), str(err.value)


@pytest.mark.parametrize("chapter", presets.chapters())
def test_every_preset_of_every_chapter_is_valid_and_describes_its_fields(chapter):
    for name in presets.PRESET_NAMES:
        cfg = presets.resolve(chapter, name)
        assert all(need > 0 for need in cfg.memory_needs().values())
    assert all(": " in text for text in presets.fields_of(chapter).values()), "every field has a help line"


# The inputs a new user tried (issue 16): each fails within 2 s, before any work, naming the parameter.
BAD_INPUTS = [
    ("feedback_principle", {"toy_width": 10**9}, "toy_width = 1000000000 would need about"),
    ("three_mechanisms", {"diagram_width": 10**9}, "diagram_width = 1000000000 would need about"),
    ("neural_race", {"saxe_hidden": 10**8}, "saxe_hidden = 100000000 would need about"),
    ("spring_block", {"width": 512, "n_train": 1700, "n_seeds": 200}, "width = 512 would need about"),
    ("kpflow", {"mt_hidden": 2048, "mt_batch": 20000}, "mt_hidden = 2048 would need about"),
    ("neural_race", {"trained": 7}, "trained must be < modules = 7"),
    ("neural_race", {"km_trained": (1, 10)}, "km_trained must hold values < km_modules = 10"),
    ("neural_race", {"race_shown": 5}, "race_shown must be one of race_contexts"),
    ("kpflow", {"g_values": (1, "a")}, "g_values[1] must be a real number"),
    ("three_mechanisms", {"widths": ()}, "widths must be a tuple of at least 1 item"),
    ("spring_block", {"alphas": (0.0, 2.0)}, "alphas[1] must be in [0.0, 1.0]"),
    ("spring_block", {"chain_eta": 0.6}, "chain_eta * chain_k must be < 0.5"),
    ("feedback_principle", {"target_singular_values": (1.0,)}, "target_singular_values must be a tuple of 2 items"),
    ("feedback_principle", '{"lr": 0.002', "overrides must be a dict or a JSON object"),
    ("feedback_principle", "[1, 2]", "overrides must be a dict or a JSON object"),
]


@pytest.mark.parametrize("chapter, overrides, message", BAD_INPUTS, ids=[str(b[1])[:40] for b in BAD_INPUTS])
def test_bad_inputs_fail_fast_with_a_clear_message(chapter, overrides, message):
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        presets.resolve(chapter, "book", overrides=overrides)
    assert time.perf_counter() - start < 2.0
    assert message in str(err.value), str(err.value)
    if "would need" in message:
        assert "GB of memory; this machine has" in str(err.value)


def test_seeds_must_fit_every_generator():
    with pytest.raises(ValueError, match=r"seed must be in \[0, 4294967295\]; got 18446744073709551616"):
        presets.resolve("kpflow", "smoke", seed=2**64)
    assert presets.resolve("kpflow", "smoke", seed=presets.MAX_SEED).seed == presets.MAX_SEED


def test_overrides_may_be_a_json_object_for_papermill():
    cfg = presets.resolve("feedback_principle", "smoke", overrides='{"lr": 0.002, "n_seeds": 3}')
    assert (cfg.lr, cfg.n_seeds) == (0.002, 3)


def test_lists_become_tuples_and_are_checked_item_by_item():
    cfg = presets.resolve("spring_block", "smoke", overrides={"alphas": [0.0, 0.5]})
    assert cfg.alphas == (0.0, 0.5)
