"""Text as it is spoken: numbers, ordinals and common symbols written out as words, for the Talker.

    spoken_form("3 apples cost $4.50 on the 2nd") -> "three apples cost four dollars fifty cents on the second"
    unsayable("hi 🙂 #1")                         -> "#🙂"   (what spoken_form leaves that no word reads)

The Talker is trained on letters (normalize_transcript, which cleans every speech transcript too); whatever
the Thinker writes goes through spoken_form first, and the characters that still have no reading are
reported by the caller.
"""
from __future__ import annotations

import re

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
           "nine": "ninth", "twelve": "twelfth"}
SYMBOLS = {"%": " percent", "&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "°": " degrees ",
           "×": " times ", "/": " slash ", "#": " number ", "*": " star ", "<": " less than ",
           ">": " more than ", "~": " about "}
CURRENCY = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent")}
PLAIN = re.compile(r"[a-zA-Z' \t\n.,!?;:\-\"()]")   # what normalize_transcript reads or drops as punctuation


def normalize_transcript(text: str) -> str:
    """Lower-case to letters, apostrophe and single spaces: "Don't go, Sir!" -> "don't go sir"."""
    t = re.sub(r"[^a-z' ]+", " ", text.lower())
    t = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", t)  # quotes, not apostrophes inside words
    return " ".join(t.split())


def cardinal(n: int) -> str:
    """0 <= n < 10**15 in words: 1234 -> "one thousand two hundred thirty four"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + (" " + ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return ONES[n // 100] + " hundred" + (" " + cardinal(n % 100) if n % 100 else "")
    for value, name in SCALES:
        if n >= value:
            return cardinal(n // value) + " " + name + (" " + cardinal(n % value) if n % value else "")
    raise ValueError(n)


def ordinal(n: int) -> str:
    """21 -> "twenty first", 12 -> "twelfth", 40 -> "fortieth"."""
    words = cardinal(n).split()
    last = words[-1]
    if last in ORDINAL:
        words[-1] = ORDINAL[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _number(digits: str) -> str:
    """A digit string: as a cardinal up to 15 digits (a leading zero or a longer run: digit by digit)."""
    if len(digits) > 15 or (len(digits) > 1 and digits[0] == "0"):
        return " ".join(ONES[int(d)] for d in digits)
    return cardinal(int(digits))


def _decimal(m: re.Match) -> str:
    whole, frac = m.group(1).replace(",", ""), m.group(2)
    return f" {_number(whole)} point {' '.join(ONES[int(d)] for d in frac)} "


def _money(m: re.Match) -> str:
    unit, sub = CURRENCY[m.group(1)]
    whole, cents = int(m.group(2).replace(",", "")), m.group(3)
    out = f"{cardinal(whole)} {unit}{'' if whole == 1 else 's'}"
    if cents and int(cents):
        c = int(cents.ljust(2, "0")[:2])
        out += f" {cardinal(c)} {sub if c == 1 else ('pence' if sub == 'penny' else sub + 's')}"
    return f" {out} "


def _time(m: re.Match) -> str:
    h, mins = int(m.group(1)), int(m.group(2))
    minutes = "o'clock" if mins == 0 else ("oh " if mins < 10 else "") + cardinal(mins)
    return f" {cardinal(h)} {minutes} "


def spoken_form(text: str) -> str:
    """`text` with money, times, decimals, ordinals, numbers and the common symbols as words (other
    characters unchanged; see unsayable)."""
    t = re.sub(r"([$£€])\s?(\d[\d,]*)(?:\.(\d{1,2}))?\b", _money, text)
    t = re.sub(r"\b(\d{1,2}):(\d{2})\b", _time, t)
    t = re.sub(r"(\d[\d,]*)\.(\d+)", _decimal, t)
    t = re.sub(r"\d{1,3}(?:,\d{3})+(?!\d)", lambda m: m.group(0).replace(",", ""), t)   # 1,234 -> 1234
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: f" {ordinal(int(m.group(1)))} ", t, flags=re.I)
    t = re.sub(r"\d+", lambda m: f" {_number(m.group(0))} ", t)
    t = re.sub(r"(?<=\w)-(?=\w)", " ", t)   # twenty-one, 3-4
    for sym, word in SYMBOLS.items():
        t = t.replace(sym, word)
    return re.sub(r" ([.,!?;:])", r"\1", " ".join(t.split()))


def unsayable(text: str) -> str:
    """The distinct characters of spoken_form(text) that are neither letters nor plain punctuation: what a
    speaker would otherwise drop without a word."""
    return "".join(sorted({c for c in spoken_form(text) if not PLAIN.match(c)}))
