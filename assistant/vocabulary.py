"""The library's words for the words patients use: brand <-> generic drug names (built
from FDA labels by finetune/build_drug_kb.py) and everyday terms ("water pill" ->
diuretic), so a question finds the page whatever name it uses."""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

DRUG_NAMES = paths.DATA_DIR / "kb" / "drug_names.json"
LAY_TERMS = paths.DATA_DIR / "kb" / "lay_terms.json"
MAX_PHRASE_WORDS = 5


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@dataclass
class Vocabulary:
    # phrase (normalised) -> the words the library uses for it
    terms: dict[str, list[str]] = field(default_factory=dict)
    # drug names the library holds text on (normalised, salt-free), and those it knows only by name
    held: frozenset[str] = frozenset()
    not_held: dict[str, str] = field(default_factory=dict)  # normalised -> as written

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> "Vocabulary":
        return cls.load(DRUG_NAMES, LAY_TERMS)

    @classmethod
    def load(cls, drug_names: Path | None = None, lay_terms: Path | None = None) -> "Vocabulary":
        terms: dict[str, list[str]] = {}
        held: set[str] = set()
        not_held: dict[str, str] = {}
        if drug_names is not None and Path(drug_names).exists():
            data = _read(drug_names)
            for name, others in data.get("names", {}).items():
                terms.setdefault(normalise(name), []).extend(others)
            held = {normalise(n) for n in data.get("held", [])}
            not_held = {normalise(k): n for k, n in data.get("not_held", {}).items()}
        if lay_terms is not None and Path(lay_terms).exists():
            for phrase, words in _read(lay_terms).get("terms", {}).items():
                terms.setdefault(normalise(phrase), []).extend(words)
        return cls({k: list(dict.fromkeys(v)) for k, v in terms.items() if k}, frozenset(held), not_held)

    def _phrases(self, text: str):
        """(start, end, phrase) of every known phrase in `text`, longest first at each place."""
        words = normalise(text).split()
        i = 0
        while i < len(words):
            for n in range(min(MAX_PHRASE_WORDS, len(words) - i), 0, -1):
                phrase = " ".join(words[i:i + n])
                if phrase in self.terms or phrase in self.not_held:
                    yield i, i + n, phrase
                    i += n - 1
                    break
            i += 1

    def expand(self, text: str) -> list[tuple[str, list[str]]]:
        """[(phrase in the text, [the library's words for it]), ...]."""
        return [(p, self.terms[p]) for _, _, p in self._phrases(text) if self.terms.get(p)]

    def drugs_not_held(self, text: str) -> list[str]:
        """Medicines the text names that the library has no text on (as MedlinePlus writes
        them), so an answer can say which one it cannot help with."""
        out = []
        for _, _, phrase in self._phrases(text):
            names = [phrase, *(normalise(n) for n in self.terms.get(phrase, []))]
            missing = next((self.not_held[n] for n in names if n in self.not_held), None)
            if missing and not set(names) & self.held and missing not in out:
                out.append(missing)
        return out


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the vocabulary ({exc})") from exc
