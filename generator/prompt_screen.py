"""The prompt screen, before anything is queued: a server's own term list, and a built-in block
for sexual content involving minors that no policy, channel or setting can turn off.

How the built-in block decides (a term approach, so it is predictable and testable):

- The prompt is normalised first: Unicode NFKC, accents stripped, case folded, common digit and
  symbol stand-ins read as letters inside words ("s3x" -> "sex", "k1d" -> "kid"), and any run of
  non-letters treated as one space, so "nude_child" and "nude-child" read as two words.
- A prompt is blocked when it names a minor AND a sexual term, anywhere in it. Neither alone
  blocks: "a child flying a kite" and "a nude-coloured dress" both pass. Words for minors are
  explicit (child, kid, toddler, teen, schoolgirl, little girl, ...) or an age under 18
  ("12 year old", "12yo"). "girl" and "boy" alone are not counted: they are used of adults far
  too often to block on.
- A few words exist only to sexualise minors (loli, shota, jailbait ...): they block alone.
- Matching is on whole words with their plural/-ing forms, so "kidney" is not "kid" and
  "Essex" is not "sex".

What it cannot catch (also in the README): words it does not know, misspellings beyond the
stand-ins above, a minor described without any of its words ("a first-grader"), other languages,
and images whose content is the problem while the prompt is harmless: the image and frame
checks cover explicit content, but no check here judges a person's age in a picture.

The negative prompt must NOT be screened with the combined rule: "nude, nsfw" is a common
negative prompt precisely to steer away from such content.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from generator.safety import RULE_BLOCKED_TERM, RULE_MINORS, RULE_OK, Verdict

# Words that name a minor. Multi-word entries match as a phrase.
MINOR_TERMS = (
    "child",
    "children",
    "childs",
    "kid",
    "kids",
    "kiddie",
    "kiddo",
    "minor",
    "minors",
    "underage",
    "under age",
    "toddler",
    "infant",
    "baby",
    "babies",
    "preteen",
    "pre teen",
    "tween",
    "teen",
    "teens",
    "teenage",
    "teenager",
    "teenagers",
    "young teen",
    "schoolgirl",
    "schoolboy",
    "school girl",
    "school boy",
    "little girl",
    "little boy",
    "young girl",
    "young boy",
    "daughter",
    "son",
    "niece",
    "nephew",
    "lolita",
    "pubescent",
    "prepubescent",
    "juvenile",
    "youngster",
    "elementary school",
    "middle school",
    "grade schooler",
)
# Words that exist to sexualise minors: blocked on their own.
MINOR_SEXUAL_TERMS = (
    "loli",
    "lolicon",
    "shota",
    "shotacon",
    "jailbait",
    "pedo",
    "pedophile",
    "paedophile",
    "pedophilia",
    "paedophilia",
)
# Sexual terms. Stems marked with a trailing * match any ending ("masturbat*").
SEXUAL_TERMS = (
    "sex",
    "sexy",
    "sexual",
    "sexually",
    "sexualized",
    "sexualised",
    "porn",
    "porno",
    "pornographic",
    "nude",
    "nudes",
    "nudity",
    "naked",
    "nsfw",
    "erotic",
    "erotica",
    "topless",
    "bottomless",
    "undress*",
    "unclothed",
    "lingerie",
    "breast",
    "breasts",
    "boob",
    "boobs",
    "tits",
    "nipple",
    "nipples",
    "genital*",
    "penis",
    "vagina",
    "vulva",
    "crotch",
    "orgasm*",
    "masturbat*",
    "fetish*",
    "bdsm",
    "bondage",
    "hentai",
    "lewd",
    "explicit",
    "aroused",
    "arousing",
    "horny",
    "seductive",
    "seducing",
    "seduce",
    "intercourse",
    "molest*",
    "rape",
    "raped",
    "grope",
    "groping",
    "fondl*",
    "stripper",
    "striptease",
    "stripping",
    "xxx",
    "onlyfans",
    "cum",
    "blowjob",
    "handjob",
    "spread legs",
    "upskirt",
    "sensual",
    "kinky",
)

# Everyday phrases that contain a sexual term but are not sexual: removed before the sexual
# terms are looked for, so "kids watching stars with the naked eye" passes.
BENIGN_PHRASES = (
    "naked eye",
    "naked eyes",
    "naked mole rat",
    "naked mole rats",
    "naked flame",
    "naked flames",
    "naked light",
    "naked tree",
    "naked trees",
    "naked branches",
    "nude colour",
    "nude color",
    "nude coloured",
    "nude colored",
    "nude tone",
    "nude tones",
    "nude lipstick",
    "nude shoes",
    "explicit instructions",
    "breast stroke",
    "breaststroke",
    "chicken breast",
    "chicken breasts",
    "robin redbreast",
    "breast milk",
    "breast feeding",
    "breast fed",
    "oilseed rape",
    "rape field",
    "rape fields",
    "cum laude",
)

# Stand-ins read as letters inside a word that has letters ("s3x", "k1d"); a plain number
# keeps its digits, and ages are read from the text before this step ("12yo" stays 12).
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"}
)
_TOKEN = re.compile(r"[a-z0-9@$!]+")
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
        ]
    )
}
_AGE = re.compile(
    r"\b(\d{1,2}|" + "|".join(_NUMBER_WORDS) + r")\s*"
    r"(?:yo|y o|yr old|yrs old|year old|years old)\b"
    r"|\baged?\s+(\d{1,2})\b"
)


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    stripped = "".join(
        c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)
    )
    return stripped.casefold()


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text))


def _unleet(token: str) -> str:
    # "!" is a stand-in only inside a word ("k!d"); at its ends it is punctuation ("child!!").
    core = token.strip("!")
    has_letter = any("a" <= c <= "z" for c in core)
    return core.translate(_LEET) if has_letter else core


def normalise(text: str) -> str:
    """The form the word rules match against: NFKC, no accents, casefolded, stand-ins read as
    letters, words (runs of a-z0-9) separated by single spaces."""
    return _words(_TOKEN.sub(lambda m: _unleet(m[0]), _fold(text)))


def _pattern(terms: Iterable[str]) -> re.Pattern[str]:
    parts = []
    for term in terms:
        words = normalise(term.rstrip("*")).split()
        if not words:
            continue
        body = r"\s+".join(re.escape(w) for w in words)
        # A stem matches any ending; a word matches itself and its plural.
        parts.append(body + (r"[a-z]*" if term.endswith("*") else r"(?:s|es)?"))
    if not parts:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile(r"\b(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")\b")


_MINOR = _pattern(MINOR_TERMS)
_MINOR_SEXUAL = _pattern(MINOR_SEXUAL_TERMS)
_SEXUAL = _pattern(SEXUAL_TERMS)
_BENIGN = re.compile(
    r"\b(?:"
    + "|".join(re.escape(p) for p in sorted(BENIGN_PHRASES, key=len, reverse=True))
    + r")\b"
)

MINORS_REASON = (
    "This prompt combines a minor with sexual content. That is never allowed, in any channel."
)


def names_minor(prompt: str) -> bool:
    """True when the prompt names a minor: a word for one, or an age under 18."""
    if _MINOR.search(normalise(prompt)):
        return True
    for match in _AGE.finditer(_words(_fold(prompt))):
        value = match[1] or match[2]
        age = int(value) if value.isdigit() else _NUMBER_WORDS[value]
        if age < 18:
            return True
    return False


def screen_prompt(prompt: str, *, blocked_terms: Iterable[str] = ()) -> Verdict:
    """Screen a prompt. The minors block runs first and always; then the server's own
    `blocked_terms` (whole words or phrases, normalised the same way; a trailing * matches any
    ending). Returns an allowed Verdict or a refusal whose reason can be shown to the member."""
    text = normalise(prompt)
    sexual = _SEXUAL.search(_BENIGN.sub(" ", text))
    if _MINOR_SEXUAL.search(text) or (sexual and names_minor(prompt)):
        return Verdict(allowed=False, rule=RULE_MINORS, reason=MINORS_REASON)
    terms = [t for t in (str(t).strip() for t in blocked_terms) if normalise(t.rstrip("*"))]
    if terms:
        found = _pattern(terms).search(text)
        if found:
            return Verdict(
                allowed=False,
                rule=RULE_BLOCKED_TERM,
                reason=f"This prompt uses a term this server does not allow ({found[0]!r}).",
            )
    return Verdict(allowed=True, rule=RULE_OK)
