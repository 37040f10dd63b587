"""Deterministic debug assets: a Llama-2-shaped tokenizer and alpaca-format stand-in datasets.

Nothing is downloaded. A synthetic English-like language (invented words built from syllables,
real English function words, digits, punctuation and some Chinese, accented Latin and emoji)
trains a sentencepiece BPE model shaped like Llama-2's, and fills `alpaca_5010.json` and
`alpaca_521.json` with records whose piece counts follow the contest's files (quantile tables
measured once on the real files, embedded below). Every output is byte-identical across runs for
a given seed.

    python -m msllama.debug_data --out DIR
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import sentencepiece as spm

from .tokenizer import Tokenizer

VOCAB_SIZE = 32000
TOKENIZER_FILE = "tokenizer.model"
MANIFEST_FILE = "manifest.json"

# Quantiles (at QUANTILE_PROBS) of the judge's piece counts under the Llama-2 tokenizer, no BOS:
# prompt = instruction + ":" + input if input else instruction; output = the record's output.
# Measured on the contest's files with `length_quantiles(measure_lengths(...))`. alpaca_5010 is
# split because the judge's speed task sends exactly its first 1500 records.
QUANTILE_PROBS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55,
                  0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 0.995,
                  0.998, 1.0)


@dataclass(frozen=True)
class LengthProfile:
    """Piece-count quantiles of `records` consecutive records of a contest dataset."""
    records: int
    prompt: tuple[int, ...]
    output: tuple[int, ...]


DATASET_PROFILES: dict[str, tuple[LengthProfile, ...]] = {
    "alpaca_5010.json": (
        LengthProfile(
            1500,
            prompt=(4, 6, 7, 8, 10, 10, 11, 12, 13, 13, 14, 15, 16, 17, 18, 19, 21, 22, 25, 29, 34,
                    38, 41, 48, 62, 78, 101, 129, 192),
            output=(1, 2, 2, 4, 7, 9, 12, 15, 19, 24, 29, 37, 46, 57, 69, 80, 89, 100, 111, 125,
                    144, 153, 166, 189, 239, 294, 341, 399, 504)),
        LengthProfile(
            3510,
            prompt=(4, 6, 7, 8, 9, 10, 11, 12, 13, 13, 14, 15, 16, 17, 18, 19, 21, 22, 24, 28, 32,
                    36, 41, 48, 62, 77, 94, 125, 188),
            output=(0, 2, 2, 4, 8, 10, 12, 15, 18, 23, 29, 38, 48, 57, 68, 78, 87, 96, 106, 120,
                    138, 150, 166, 193, 244, 287, 351, 406, 822)),
    ),
    "alpaca_521.json": (
        LengthProfile(
            521,
            prompt=(5, 6, 7, 8, 9, 10, 11, 12, 13, 13, 14, 15, 16, 17, 18, 20, 21, 24, 27, 29, 35,
                    40, 46, 66, 87, 110, 120, 138, 337),
            output=(1, 2, 2, 5, 8, 9, 13, 16, 18, 23, 29, 41, 51, 60, 71, 80, 89, 99, 111, 124,
                    147, 159, 169, 188, 248, 306, 368, 415, 464)),
    ),
}

# --- the synthetic language -------------------------------------------------------------------

_ONSETS = ("b c d f g h j k l m n p r s t v w z br cr dr fr gr pr tr bl cl fl gl pl sl st sp sk "
           "sh ch th wh qu sc sm sn sw").split() + [""] * 6
_VOWELS = "a e i o u a e i o ai ea ee oo ou ie oa y".split()
_CODAS = [""] * 8 + "n r s t l m nd st ng rt ck x th sh nt ss ll".split()
_SUFFIXES = [""] * 10 + "s ed ing er ly tion ment ness able al".split()
_ACCENTED = {"a": "áàâä", "e": "éèêë", "i": "íî", "o": "óôö", "u": "úüû", "n": "ñ", "c": "ç"}
FUNCTION_WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if will "
    "what so can no more out do up about into than some could them other these may its then how "
    "only two new like our most over such after also any many where should very first because "
    "each those between both under").split()
_EMOJI = tuple("😀😂🙂😉😍🤔👍🎉🔥🌟🚀🍎🐍🌍💡📚")
_TYPOGRAPHY = ("–", "—", "•", "°", "×", "…")
_CJK_FIRST, _CJK_COUNT, _CJK_USED = 0x4E00, 0x9FA5 - 0x4E00, 700

# Shares of running text by word kind; the rest are invented words.
_KIND_SHARES = {"function": 0.38, "number": 0.035, "accented": 0.025, "cjk": 0.02, "emoji": 0.004,
                "typography": 0.008}


@dataclass(frozen=True)
class _Lexicon:
    invented: np.ndarray        # str objects, most frequent first
    invented_cdf: np.ndarray    # Zipf distribution over `invented`
    accented: tuple[str, ...]
    cjk: tuple[str, ...]

    @classmethod
    def build(cls, rng: np.random.Generator, size: int = 40000) -> _Lexicon:
        syllables = np.array([o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS])
        lengths = rng.choice([1, 2, 3, 4], size=size, p=[0.25, 0.4, 0.25, 0.1])
        parts = syllables[rng.integers(syllables.size, size=(size, 4))]
        suffixes = rng.choice(_SUFFIXES, size=size)
        invented = ["".join(p[:n]) + s for p, n, s in zip(parts, lengths, suffixes)]
        zipf = 1.0 / np.arange(10, size + 10)  # offset: no invented word outweighs "the"
        accented = []
        for word in rng.choice(invented, size=800, replace=False):
            chars = list(word)
            for i in [i for i, ch in enumerate(chars) if ch in _ACCENTED][:2]:
                chars[i] = rng.choice(list(_ACCENTED[chars[i]]))
            accented.append("".join(chars))
        cjk = np.sort(rng.choice(_CJK_COUNT, size=_CJK_USED, replace=False)) + _CJK_FIRST
        return cls(np.array(invented, dtype=object), np.cumsum(zipf / zipf.sum()),
                   tuple(accented), tuple(chr(c) for c in cjk))


class _Writer:
    """Draws text of the synthetic language from one seeded generator, in vectorised blocks."""

    def __init__(self, lexicon: _Lexicon, rng: np.random.Generator) -> None:
        self.lex = lexicon
        self.rng = rng

    def words(self, n: int) -> np.ndarray:
        lex = self.lex
        out = lex.invented[np.minimum(np.searchsorted(lex.invented_cdf, self.rng.random(n)),
                                      len(lex.invented) - 1)]
        kind = np.searchsorted(np.cumsum(list(_KIND_SHARES.values())), self.rng.random(n), side="right")
        for k, name in enumerate(_KIND_SHARES):
            where = np.flatnonzero(kind == k)
            out[where] = self._words_of_kind(name, where.size)
        return out

    def _words_of_kind(self, kind: str, n: int) -> list[str]:
        rng = self.rng
        if kind == "number":
            return [self._number() for _ in range(n)]
        if kind == "cjk":
            return [self.cjk(int(k)) for k in rng.integers(1, 5, size=n)]
        pool = {"function": FUNCTION_WORDS, "accented": self.lex.accented, "emoji": _EMOJI,
                "typography": _TYPOGRAPHY}[kind]
        return [pool[i] for i in rng.integers(len(pool), size=n)]

    def cjk(self, n: int) -> str:
        # Zipf-like: a few characters are common, most are rare (some end up as byte pieces).
        index = np.minimum(self.rng.zipf(1.3, size=n) - 1, len(self.lex.cjk) - 1)
        return "".join(self.lex.cjk[i] for i in index)

    def _number(self) -> str:
        rng = self.rng
        form = rng.integers(5)
        if form == 0:
            return str(rng.integers(1900, 2031))
        if form == 1:
            return f"{rng.integers(100)}.{rng.integers(10)}"
        if form == 2:
            return f"{rng.integers(1, 100)}%"
        if form == 3:
            return f"{int(rng.integers(1000, 1_000_000)):,}"
        return str(rng.integers(1, 13))

    def sentences(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Words of `count` sentences (capitalised, with commas, quotes and final punctuation),
        flat, and each sentence's word count."""
        rng = self.rng
        lengths = rng.integers(4, 25, size=count)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        words = self.words(int(ends[-1]))
        comma = rng.random(words.size) < 0.08
        comma[ends - 1] = False
        words[comma] = words[comma] + ","
        quoted = np.flatnonzero(rng.random(words.size) < 0.004)
        words[quoted] = ["“" + w + "”" for w in words[quoted]]
        owner = np.flatnonzero(rng.random(words.size) < 0.004)
        words[owner] = words[owner] + "’s"
        words[starts] = [w[:1].upper() + w[1:] for w in words[starts]]
        words[ends - 1] = words[ends - 1] + np.array([".", "?", "!"], dtype=object)[
            rng.choice(3, size=count, p=[0.8, 0.13, 0.07])]
        return words, lengths

    def cjk_sentence(self) -> str:
        rng = self.rng
        clauses = [self.cjk(int(rng.integers(3, 12))) for _ in range(rng.integers(1, 4))]
        return "，".join(clauses) + "。"

    def items(self, lists: bool) -> Iterator[tuple[str, bool]]:
        """An endless stream of (text item with its leading separator, starts a sentence).

        With `lists`, some sentences start numbered list entries on new lines, as many alpaca
        answers do.
        """
        entry = 0
        while True:
            words, lengths = self.sentences(256)
            numbered = self.rng.random(lengths.size) < (0.15 if lists else 0.0)
            start = 0
            for n, marker in zip(lengths, numbered):
                if marker:
                    entry = entry % 9 + 1
                    yield f"\n{entry}.", True
                yield " " + words[start], not marker
                yield from ((" " + w, False) for w in words[start + 1:start + n])
                start += n


def _corpus(seed: int, sentences: int = 100_000) -> list[str]:
    """Training lines of the synthetic language (no newlines, as Llama's vocabulary has none)."""
    rng = np.random.default_rng([seed, 0])
    writer = _Writer(_Lexicon.build(rng), rng)
    words, lengths = writer.sentences(sentences)
    # Lines of 1-5 sentences, and now and then a line of Chinese.
    per_line = np.cumsum(rng.integers(1, 6, size=sentences))
    bounds = np.concatenate([[0], np.cumsum(lengths)[per_line[per_line < sentences] - 1], [words.size]])
    lines = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lines.append(" ".join(words[a:b]))
        if rng.random() < 0.03:
            lines.append(writer.cjk_sentence())
    return lines


def build_tokenizer(out_path: str, seed: int = 0) -> str:
    """Trains the debug tokenizer (Llama-2's shape: BPE, 32000 pieces, byte fallback, unk/bos/eos
    = 0/1/2, no pad piece, split digits, dummy prefix) and writes it to `out_path`."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)), model_writer=model, model_type="bpe",
        vocab_size=VOCAB_SIZE, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        split_digits=True, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        character_coverage=0.99995, max_sentencepiece_length=16,
        # Single-threaded over a fixed input order: the model is byte-identical across runs.
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2)
    _write_atomic(out_path, model.getvalue())
    return out_path


# --- datasets ------------------------------------------------------------------------------------

def judge_prompt(record: dict) -> str:
    """The prompt the judge sends for a record."""
    return record["instruction"] + ":" + record["input"] if record["input"] else record["instruction"]


def measure_lengths(records: Sequence[dict], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Piece counts (no BOS) of the judge's prompt and of the output, per record."""
    prompt = np.array([tokenizer.piece_count(judge_prompt(r)) for r in records], dtype=np.int64)
    output = np.array([tokenizer.piece_count(r["output"]) for r in records], dtype=np.int64)
    return prompt, output


def length_quantiles(counts: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.round(np.quantile(counts, QUANTILE_PROBS)))


def _lengths(quantiles: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    # Evenly spaced probabilities that include 0 and 1 reproduce the minimum and maximum too.
    values = np.interp(np.linspace(0.0, 1.0, n), QUANTILE_PROBS, quantiles)
    return rng.permutation(np.round(values).astype(np.int64))


class _Composer:
    """Writes text with an exact piece count under a given tokenizer."""

    def __init__(self, tokenizer: Tokenizer, writer: _Writer) -> None:
        self.tok = tokenizer
        self.writer = writer
        self._cost: dict[str, int] = {}
        self._streams = {lists: writer.items(lists) for lists in (False, True)}
        self.fillers = [w for w in FUNCTION_WORDS if self._item_cost(" " + w) == 1]
        if not self.fillers:
            raise ValueError(f"tokenizer {tokenizer.path!r}: no English function word is a single piece")

    def _item_cost(self, item: str) -> int:
        # Pieces never span a space, so a word's cost does not depend on what precedes it.
        if item not in self._cost:
            self._cost[item] = self.tok.piece_count("a" + item) - 1
        return self._cost[item]

    def text(self, target: int, lists: bool, prefix: str = "") -> str:
        """Text t starting a sentence, with piece_count(prefix + t) == target."""
        count = self.tok.piece_count
        n = count(prefix) if prefix else 0
        if target < n:
            raise ValueError(f"target {target} is below the {n} pieces of the prefix")
        stream = self._streams[lists]
        item, start = next(stream)
        while not start:
            item, start = next(stream)
        parts: list[str] = []
        while n < target:
            cost = self._item_cost(item)
            if n + cost > target:
                item, cost = self._filler(), 1
            parts.append(item)
            n += cost
            item = next(stream)[0]
        if parts and parts[-1][-1] not in ".?!":
            parts[-1] = parts[-1].rstrip(",") + "."

        # The text's start (no separator), joins and the final "." shift the estimate: correct it
        # in front of the last item so the text keeps its end.
        def measure() -> int:
            return count(prefix + "".join(parts).lstrip())
        n = measure()
        while n > target:
            del parts[-2 if len(parts) > 1 else -1]
            n = measure()
        while n < target:
            parts.insert(max(0, len(parts) - 1), self._filler())
            n = measure()
        return "".join(parts).lstrip()

    def _filler(self) -> str:
        return " " + self.fillers[self.writer.rng.integers(len(self.fillers))]


def _record(composer: _Composer, prompt_len: int, output_len: int) -> dict:
    rng = composer.writer.rng
    # As in alpaca, the longer the prompt the likelier it has an input (measured shares: ~0 below
    # 10 pieces, ~40 % at 16-20, ~95 % above 30).
    if prompt_len >= 6 and rng.random() < min(0.97, max(0.0, (prompt_len - 11) / 18)):
        instruction = composer.text(int(min(prompt_len - 3, rng.integers(5, 20))), lists=False)
        data = composer.text(prompt_len, lists=False, prefix=instruction + ":")
    else:
        instruction, data = composer.text(prompt_len, lists=False), ""
    return {"instruction": instruction, "input": data, "output": composer.text(output_len, lists=True)}


def build_datasets(tokenizer_path: str, out_dir: str, seed: int = 0) -> list[str]:
    """Writes the stand-ins of `alpaca_5010.json` and `alpaca_521.json` into `out_dir`."""
    tokenizer = Tokenizer(tokenizer_path)
    os.makedirs(out_dir, exist_ok=True)
    lexicon = _Lexicon.build(np.random.default_rng([seed, 0]))  # the tokenizer corpus's words
    paths = []
    for d, (name, profiles) in enumerate(sorted(DATASET_PROFILES.items())):
        rng = np.random.default_rng([seed, 1, d])
        composer = _Composer(tokenizer, _Writer(lexicon, rng))
        records = []
        for profile in profiles:
            prompts = _lengths(profile.prompt, profile.records, rng)
            outputs = _lengths(profile.output, profile.records, rng)
            records += [_record(composer, int(p), int(o)) for p, o in zip(prompts, outputs)]
        path = os.path.join(out_dir, name)
        _write_atomic(path, json.dumps(records, ensure_ascii=False, indent=4).encode("utf-8"))
        paths.append(path)
    return paths


# --- all assets, cached --------------------------------------------------------------------------

def build_all(out_dir: str, seed: int = 0) -> dict[str, str]:
    """Tokenizer and datasets in `out_dir`; files already built by this code and seed are kept.

    `manifest.json` records a key (this module's source, the seed, numpy's and sentencepiece's
    versions) and each file's sha256; a file is rebuilt when the key differs or its content
    changed.
    """
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST_FILE)
    key = _build_key(seed)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        manifest = {}
    known = manifest.get("files", {}) if manifest.get("key") == key else {}

    def current(name: str) -> bool:
        path = os.path.join(out_dir, name)
        return os.path.isfile(path) and known.get(name) == _sha256(path)

    tokenizer_path = os.path.join(out_dir, TOKENIZER_FILE)
    rebuilt = not current(TOKENIZER_FILE)
    if rebuilt:
        build_tokenizer(tokenizer_path, seed)
    if rebuilt or not all(current(name) for name in DATASET_PROFILES):
        build_datasets(tokenizer_path, out_dir, seed)
    names = [TOKENIZER_FILE, *sorted(DATASET_PROFILES)]
    paths = {name: os.path.join(out_dir, name) for name in names}
    manifest = {"key": key, "files": {name: _sha256(path) for name, path in paths.items()}}
    _write_atomic(manifest_path, json.dumps(manifest, indent=2).encode("utf-8"))
    return paths


def _build_key(seed: int) -> str:
    with open(__file__, "rb") as f:
        source = f.read()
    return (f"{hashlib.sha256(source).hexdigest()[:16]}-seed{seed}-numpy{np.__version__}"
            f"-sentencepiece{spm.__version__}")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in build_all(args.out, args.seed).values():
        print(path)


if __name__ == "__main__":
    main()
