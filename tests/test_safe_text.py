"""Bidi controls in problem and model text are made visible, never obeyed (issue 13)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pivottrace.safe_text import BIDI_CONTROLS, visible_bidi


def test_an_override_is_shown_not_obeyed():
    assert visible_bidi("Pay \u202eevil\u202c now") == "Pay [U+202E]evil[U+202C] now"
    assert visible_bidi("\u2067isolate\u2069") == "[U+2067]isolate[U+2069]"


def test_right_to_left_text_and_its_marks_are_kept():
    arabic = "\u0643\u0645 \u062a\u0641\u0627\u062d\u0629\u061c 5\u200f?"
    assert visible_bidi(arabic) == arabic


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(BIDI_CONTROLS), max_size=40))
def test_no_control_survives_and_other_text_is_untouched(text):
    shown = visible_bidi(text)
    assert not any(char in shown for char in BIDI_CONTROLS)
    assert shown.count("[U+2") - text.count("[U+2") == sum(text.count(char) for char in BIDI_CONTROLS)
    assert visible_bidi(shown) == shown  # idempotent
    if not any(char in text for char in BIDI_CONTROLS):
        assert shown == text


def test_views_show_overrides_visibly_and_still_escape():
    from pivottrace import views

    shown = views.problem_html("Pay \u202e<b>evil</b>\u202c now")
    assert "\u202e" not in shown and "[U+202E]" in shown and "&lt;b&gt;" in shown
    assert views.esc("<i>\u2067") == "&lt;i&gt;[U+2067]"
    assert "\u202e" not in views.md("a\u202eb") and "[U+202E]" in views.md("a\u202eb").replace("\\", "")
    assert views.preview("x\u202ey") == "x[U+202E]y"
