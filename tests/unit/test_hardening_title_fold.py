"""Issue 10 item 14, without a database: title_contains's pattern folds case by Unicode."""

from __future__ import annotations

import re

import pytest

from convdb import InvalidInput
from convdb.listing import MAX_TITLE_SEARCH, build_listing, case_variants, fold_pattern


def test_case_variants_are_exactly_the_characters_with_the_same_lowercase() -> None:
    """Over all of Unicode (as this Python knows it): case_variants(c) holds x iff x.lower() ==
    c.lower(), for every c whose lowercase is one character. case_variants only ever adds such
    characters, so it is enough to check that none is missing where there are several."""
    same_lower: dict[str, set[str]] = {}
    for char in map(chr, range(0x110000)):
        lower = char.lower()
        if lower != char and len(lower) == 1:
            same_lower.setdefault(lower, {lower}).add(char)
    assert len(same_lower) > 1000
    for chars in same_lower.values():
        for char in chars:
            variants = case_variants(char)
            assert set(variants) == chars, (char, variants, chars)
            assert variants[0] == char and all(v.lower() == char.lower() for v in variants)


@pytest.mark.parametrize(
    ("pattern", "title", "found"),
    [
        ("école", "ÉCOLE d'été", True),
        ("ÉTÉ", "école d'été", True),
        ("straße", "STRAẞE 5", True),
        ("ΘΕΩΡΊΑ", "θεωρία", True),
        ("k", "5 \u212a", True),  # the Kelvin sign lowercases to k
        ("d'été", "ÉCOLE D'ÉTÉ", True),
        ("a.c", "abc", False),  # regex metacharacters match themselves
        ("(x)*", "(X)*", True),
        ("[é]", "[É]", True),
        ("\\s", "a\\S", True),
        ("50%_", "50%_", True),
        ("50%_", "50ab", False),
        ("^a$", "x^A$y", True),
        ("e", "É", False),  # accents are not folded away
        ("", "anything", True),
    ],
)
def test_fold_pattern_matches_like_a_case_insensitive_substring(
    pattern: str, title: str, found: bool
) -> None:
    # Python's re reads this subset (brackets, \\-escapes of punctuation) like PostgreSQL's AREs;
    # the integration tests run the same patterns on the server.
    assert (re.search(fold_pattern(pattern), title) is not None) is found


def test_title_search_is_bounded() -> None:
    build_listing("u", title_contains="é" * MAX_TITLE_SEARCH)
    with pytest.raises(InvalidInput) as caught:
        build_listing("u", title_contains="é" * (MAX_TITLE_SEARCH + 1))
    assert caught.value.field == "title_contains"
