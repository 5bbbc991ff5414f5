"""The words the product recognises."""

from __future__ import annotations

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
DEFAULT_VOCABULARY: tuple[str, ...] = (*COMMANDS, *DIGITS, UNKNOWN, SILENCE)
FILLERS = frozenset({UNKNOWN, SILENCE})


def is_word(label: str) -> bool:
    """True for a real vocabulary word, False for the unknown/silence classes."""
    return label not in FILLERS
