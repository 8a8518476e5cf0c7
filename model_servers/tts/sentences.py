"""Splitting text into sentences for synthesis and subtitles.

Hand-written: the sentence splitters on PyPI either download models at run time (nltk punkt) or
are unmaintained (pysbd). The rules are the usual ones -- end punctuation followed by a space or a
paragraph break, except after common abbreviations and initials or before a lower-case word -- plus splitting of sentences
too long for one utterance at clause breaks, then at spaces.
"""

from __future__ import annotations

import re

_PARAGRAPH = re.compile(r"\n\s*\n")
_SPACE = re.compile(r"\s+")
# End punctuation, closing quotes/brackets, then whitespace; CJK full stops need no space after.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+|[。！？]+[”’」』)]*\s*")
_CLAUSE = re.compile(r"(?<=[,;:—–])\s+")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf no nos fig figs inc ltd co corp jan feb mar apr "
    "jun jul aug sep sept oct nov dec approx dept est gen gov lt col sgt capt rev hon u.s u.k".split()
)


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Sentences of ``text`` in order, whitespace collapsed, none longer than ``max_chars``."""
    out: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = _SPACE.sub(" ", paragraph).strip()
        if not paragraph:
            continue
        for sentence in _sentences(paragraph):
            out.extend(_limit(sentence, max_chars))
    return out


def _sentences(paragraph: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(paragraph):
        if m.group().startswith(".") and (
            _is_abbreviation(paragraph[start : m.start()]) or paragraph[m.end() : m.end() + 1].islower()
        ):
            continue  # "Dr. Smith", "J. R. R.", "at 5 p.m. in": a sentence starts with a capital
        piece = paragraph[start : m.end()].strip()
        if piece:
            pieces.append(piece)
        start = m.end()
    rest = paragraph[start:].strip()
    if rest:
        pieces.append(rest)
    return pieces


def _is_abbreviation(before_dot: str) -> bool:
    word = before_dot.rsplit(" ", 1)[-1].lstrip("\"'“‘(")
    if len(word) == 1 and word.isalpha() and word.isupper():
        return True  # an initial: "J. R. R. Tolkien"
    return word.lower() in _ABBREVIATIONS


def _limit(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    parts = _pack(_CLAUSE.split(sentence), max_chars)
    out: list[str] = []
    for part in parts:
        if len(part) <= max_chars:
            out.append(part)
            continue
        for chunk in _pack(part.split(" "), max_chars):
            # A single "word" longer than the limit (a URL, a run of digits) is cut where it must be.
            out.extend(chunk[i : i + max_chars] for i in range(0, len(chunk), max_chars))
    return out


def _pack(words: list[str], max_chars: int) -> list[str]:
    """Join consecutive pieces with spaces while they fit in ``max_chars``."""
    packed: list[str] = []
    current = ""
    for word in words:
        if not word:
            continue
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            packed.append(current)
            current = word
    if current:
        packed.append(current)
    return packed
