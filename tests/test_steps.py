"""Step segmentation and self-correction cues."""

from pivottrace.steps import cue_counts, cue_words, segment_steps


def _texts(text):
    return [text[a:b] for a, b in segment_steps(text)]


def test_spans_cover_text_contiguously():
    text = "Ava has 3 apples. She buys 2.5 kg more, e.g. from Ben.\n\n1. Add them.\n2. Done.\nAnswer: 5"
    spans = segment_steps(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_splits_at_sentences_lines_and_numbered_items():
    text = "Ava has 3 apples. She buys 2.5 more.\n1. Add them: 5.5.\n2. Round.\n\nAnswer: 5"
    assert [t.strip() for t in _texts(text)] == [
        "Ava has 3 apples.", "She buys 2.5 more.", "1. Add them: 5.5.", "2. Round.", "Answer: 5"]


def test_decimals_and_abbreviations_do_not_split():
    assert len(segment_steps("It costs 3.5 dollars, e.g. the small one.")) == 1


def test_tiny_fragments_merge_forward():
    assert [t.strip() for t in _texts("1.\nAdd 2 and 3.\nAnswer: 5")] == ["1.\nAdd 2 and 3.", "Answer: 5"]


def test_empty_text():
    assert segment_steps("") == []


def test_cues_on_word_boundaries():
    text = "Add 2 and 3. Wait, actually I should re-check.\nThe waiter waits."
    spans = segment_steps(text)
    assert cue_counts(text, spans) == [0, 3, 0]
    assert cue_words("Hmm, let me check. Alternatively, however") == ["hmm", "let me check", "alternatively", "however"]
