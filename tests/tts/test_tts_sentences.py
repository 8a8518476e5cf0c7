from hypothesis import given, strategies as st

from model_servers.tts.sentences import split_sentences


def test_splits_at_end_punctuation_in_order():
    assert split_sentences("Hello there. How are you? Fine!  Good…  Bye") == [
        "Hello there.", "How are you?", "Fine!", "Good…", "Bye",
    ]


def test_abbreviations_initials_and_decimals_do_not_end_a_sentence():
    text = "Dr. Smith met J. R. R. Tolkien at 3.5 p.m. in the U.S. for tea, e.g. green. Then he left."
    assert split_sentences(text) == [
        "Dr. Smith met J. R. R. Tolkien at 3.5 p.m. in the U.S. for tea, e.g. green.",
        "Then he left.",
    ]


def test_quotes_stay_with_their_sentence_and_paragraphs_break():
    text = 'He said "stop." She ran.\n\nNew paragraph without a stop\n\n\nLast one'
    assert split_sentences(text) == ['He said "stop."', "She ran.", "New paragraph without a stop", "Last one"]


def test_single_newlines_are_spaces():
    assert split_sentences("A hard-wrapped\nsentence here.\nNext one.") == ["A hard-wrapped sentence here.", "Next one."]


def test_cjk_full_stops_split_without_spaces():
    assert split_sentences("你好。今天很好！明天呢？") == ["你好。", "今天很好！", "明天呢？"]


def test_long_sentence_splits_at_clauses_then_spaces():
    clause = "word " * 20  # 100 chars
    text = f"{clause.strip()}, {clause.strip()}; {clause.strip()}."
    parts = split_sentences(text, max_chars=120)
    assert len(parts) == 3 and all(len(p) <= 120 for p in parts)
    assert parts[0].endswith(",") and parts[1].endswith(";")
    no_breaks = "word " * 100
    parts = split_sentences(no_breaks, max_chars=50)
    assert all(len(p) <= 50 for p in parts) and " ".join(parts) == no_breaks.strip()
    assert split_sentences("x" * 130, max_chars=50) == ["x" * 50, "x" * 50, "x" * 30]


def test_blank_text_has_no_sentences():
    assert split_sentences(" \n\n \t ") == []


@given(st.text(alphabet=st.sampled_from(list("ab .!?,\n")), max_size=400), st.integers(5, 80))
def test_never_loses_words_or_exceeds_the_limit(text, limit):
    parts = split_sentences(text, max_chars=limit)
    assert all(0 < len(p) <= limit for p in parts)
    assert "".join("".join(parts).split()) == "".join(text.split())
