"""Text tokenizers of the video foundation models, loaded from local vocabulary files.

UMT and VideoChat2's QFormer use BERT WordPiece, ViCLIP and InternVideo-MM use OpenAI
CLIP's byte-level BPE, VideoChat2's LLMs use SentencePiece. The BERT and CLIP tokenizers
are pure Python re-implementations so the input pipeline needs neither transformers nor
torch; they follow HF's `BertTokenizer` and OpenAI's `clip.tokenize` id-for-id, with the
exceptions their docstrings name.

`regex`, `sentencepiece` and `tokenizers` are imported only by the classes that need them,
so a BERT-only pipeline does not depend on them.
"""
import gzip
import html
import json
import os
import re
import unicodedata
from typing import Callable, Sequence

import numpy as np


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    """BERT counts every non-alphanumeric printable ASCII character as punctuation, e.g. `$` and `^`."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def _is_cjk(ch: str) -> bool:
    """CJK ideographs (not Hangul or kana), which BERT tokenizes one character at a time."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


def _split_punctuation(word: str) -> list[str]:
    pieces, current = [], ""
    for ch in word:
        if _is_punctuation(ch):
            if current:
                pieces.append(current)
                current = ""
            pieces.append(ch)
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def _read_wordpiece_vocab(vocab_file: str) -> dict[str, int]:
    with open(vocab_file, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


class WordPieceTokenizer:
    """BERT's uncased/cased WordPiece tokenizer over a `vocab.txt` (one token per line).

    Matches HF `BertTokenizer` (Rust) and `BertTokenizerLegacy` (Python), including their
    treatment of literal special tokens such as "[MASK]" in the text, which map to their id
    instead of being split as punctuation like in Google's original BERT. Where the two HF
    tokenizers disagree we follow Google's BERT: lowercasing is `str.lower()` (a word-final
    Σ becomes ς, as in the Python tokenizer; the Rust one gives σ), and there is no NFC
    step (decomposed accents in cased mode stay two characters, as in the Rust tokenizer;
    the Python one composes them).
    """

    UNK, CLS, SEP, PAD, MASK = "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"
    SPECIALS = (UNK, CLS, SEP, PAD, MASK)
    MAX_WORD_CHARS = 100

    def __init__(self, vocab_file: str, *, lowercase: bool = True, max_length: int | None = None):
        self.vocab = _read_wordpiece_vocab(vocab_file)
        missing = [t for t in self.SPECIALS if t not in self.vocab]
        if missing:
            raise ValueError(f"{vocab_file} lacks the special tokens {missing}")
        self._tokens = {i: t for t, i in self.vocab.items()}
        self.lowercase = lowercase
        self.max_length = max_length
        self._special_split = re.compile("(" + "|".join(map(re.escape, self.SPECIALS)) + ")")

    @property
    def cls_id(self) -> int:
        return self.vocab[self.CLS]

    @property
    def sep_id(self) -> int:
        return self.vocab[self.SEP]

    @property
    def pad_id(self) -> int:
        return self.vocab[self.PAD]

    @property
    def mask_id(self) -> int:
        return self.vocab[self.MASK]

    @property
    def unk_id(self) -> int:
        return self.vocab[self.UNK]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece strings of `text`, without [CLS]/[SEP]."""
        tokens = []
        # Splitting on a capturing group puts the literal special tokens at the odd positions.
        for i, segment in enumerate(self._special_split.split(text)):
            if i % 2:
                tokens.append(segment)
                continue
            for word in self._basic_tokenize(segment):
                tokens.extend(self._wordpiece(word))
        return tokens

    def _basic_tokenize(self, text: str) -> list[str]:
        """Drops control characters, unifies whitespace, isolates CJK ideographs and punctuation."""
        chars = []
        for ch in text:
            if ch in "\x00\ufffd" or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(ch):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).split():
            if self.lowercase:
                word = _strip_accents(word.lower())
            words.extend(_split_punctuation(word))
        return words

    def _wordpiece(self, word: str) -> list[str]:
        """Greedy longest-prefix match; a word with any unmatched remainder becomes one [UNK]."""
        if len(word) > self.MAX_WORD_CHARS:
            return [self.UNK]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
            else:
                return [self.UNK]
            pieces.append(piece)
            start = end
        return pieces

    def encode(self, text: str, *, max_length: int | None = None, padding: bool = False) -> dict:
        """[CLS] tokens [SEP] as int32 `input_ids` and `attention_mask`.

        Longer sequences are truncated to `max_length` (default: the constructor's) keeping the
        final [SEP], as HF does with `truncation=True`; `padding` pads with [PAD] up to it.
        """
        max_length = self.max_length if max_length is None else max_length
        ids = [self.cls_id, *(self.vocab[t] for t in self.tokenize(text)), self.sep_id]
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"max_length {max_length} leaves no room for [CLS] and [SEP]")
            if len(ids) > max_length:
                ids = ids[:max_length - 1] + [self.sep_id]
        mask = [1] * len(ids)
        if padding:
            if max_length is None:
                raise ValueError("padding needs a max_length")
            pad = max_length - len(ids)
            ids, mask = ids + [self.pad_id] * pad, mask + [0] * pad
        return {"input_ids": np.asarray(ids, np.int32), "attention_mask": np.asarray(mask, np.int32)}

    def batch_encode(self, texts: Sequence[str], max_length: int | None = None) -> dict:
        """`encode` of each text, padded to `max_length`: int32 arrays of shape (B, max_length)."""
        max_length = self.max_length if max_length is None else max_length
        if max_length is None:
            raise ValueError("batch_encode needs a max_length")
        rows = [self.encode(t, max_length=max_length, padding=True) for t in texts]
        return {k: np.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}

    def decode(self, ids: Sequence[int]) -> str:
        """Space-joined words with `##` pieces glued back; [CLS], [SEP] and [PAD] are dropped."""
        skip = {self.cls_id, self.sep_id, self.pad_id}
        words = []
        for i in ids:
            if int(i) in skip:
                continue
            token = self._tokens[int(i)]
            if token.startswith("##") and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        return " ".join(words)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable characters, in CLIP's vocabulary order.

    Printable Latin-1 bytes map to themselves; the rest to code points from 256 upwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


_CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CLIP_NUM_MERGES = 49152 - 256 - 2
_CURLY_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"'})


def _read_lines(path: str) -> list[str]:
    """Lines of a plain or gzipped UTF-8 file, recognised by the gzip magic number rather than the name."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8").split("\n")


class ClipBpeTokenizer:
    """OpenAI CLIP's byte-level BPE (`clip.tokenize`), from `bpe_simple_vocab_16e6.txt.gz`.

    The merges file has a header line, then one "a b" merge per line; like OpenAI's code only
    the first 49152-256-2 merges are used and the vocabulary is the 256 byte characters, the
    same with the `</w>` end-of-word marker, the merged tokens, then <|startoftext|> and
    <|endoftext|>.

    Text cleaning stands in for OpenAI's `ftfy.fix_text` + `html.unescape` with what matters
    for captions: HTML entities unescaped twice, NFC, curly quotes straightened, whitespace
    collapsed, `str.lower()`. Unlike ftfy it does not repair mojibake, expand ligatures, narrow
    full-width characters or drop control characters. HF's `CLIPTokenizer` (transformers 5)
    only applies NFC, whitespace collapse and a char-by-char lowercase, so it also differs
    from OpenAI's on HTML entities, curly quotes and word-final Σ (σ there, ς here).
    """

    def __init__(self, bpe_file: str, *, context_length: int = 77):
        merges = [tuple(line.split()) for line in _read_lines(bpe_file)[1:] if line.strip()]
        merges = merges[:_CLIP_NUM_MERGES]
        chars = list(_bytes_to_unicode().values())
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self._setup({token: i for i, token in enumerate(vocab)}, merges, context_length)

    @classmethod
    def from_hf_files(cls, vocab_json: str, merges_txt: str, *, context_length: int = 77) -> "ClipBpeTokenizer":
        """The HF layout of the same tokenizer: `vocab.json` and `merges.txt` (`#version` header)."""
        with open(vocab_json, encoding="utf-8") as f:
            encoder = json.load(f)
        lines = _read_lines(merges_txt)
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        tokenizer = cls.__new__(cls)
        tokenizer._setup(encoder, [tuple(line.split()) for line in lines if line.strip()], context_length)
        return tokenizer

    def _setup(self, encoder: dict[str, int], merges: list[tuple[str, str]], context_length: int):
        import regex

        self.encoder = encoder
        self.decoder = {i: t for t, i in encoder.items()}
        self.context_length = context_length
        self._ranks = {merge: rank for rank, merge in enumerate(merges)}
        self._byte_encoder = _bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._pattern = regex.compile(_CLIP_PATTERN, regex.IGNORECASE)
        self._whitespace = regex.compile(r"\s+")
        self._cache = {t: [t] for t in ("<|startoftext|>", "<|endoftext|>")}

    @property
    def sot_id(self) -> int:
        return self.encoder["<|startoftext|>"]

    @property
    def eot_id(self) -> int:
        return self.encoder["<|endoftext|>"]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def clean(self, text: str) -> str:
        """The text as OpenAI's tokenizer sees it before splitting (see the class docstring)."""
        text = html.unescape(html.unescape(text))
        text = unicodedata.normalize("NFC", text).translate(_CURLY_QUOTES)
        return self._whitespace.sub(" ", text).strip().lower()

    def _bpe(self, word: str) -> list[str]:
        """Repeatedly merges every occurrence of the lowest-ranked adjacent pair; cached per word."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self._ranks.get(p, len(self._ranks)))
            if pair not in self._ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of the cleaned text, without <|startoftext|>/<|endoftext|>."""
        ids = []
        for word in self._pattern.findall(self.clean(text)):
            word = "".join(self._byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(word))
        return ids

    def tokenize(self, texts: str | Sequence[str], context_length: int | None = None,
                 truncate: bool = True) -> np.ndarray:
        """`clip.tokenize`: (B, context_length) int32 of sot, tokens, eot, then zeros.

        A text too long is cut with its last kept token replaced by eot when `truncate`,
        otherwise it raises.
        """
        context_length = self.context_length if context_length is None else context_length
        texts = [texts] if isinstance(texts, str) else list(texts)
        result = np.zeros((len(texts), context_length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"{text!r} is {len(ids)} tokens, over the context length {context_length}")
                ids = ids[:context_length - 1] + [self.eot_id]
            result[row, :len(ids)] = ids
        return result

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids after <|startoftext|> and before the first <|endoftext|>: a `tokenize` row as is."""
        ids = [int(i) for i in ids]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        text = "".join(self.decoder[i] for i in ids if i != self.sot_id)
        data = bytearray(self._byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()


class SentencePieceTokenizer:
    """LLaMA/Mistral `tokenizer.model` through the `sentencepiece` package."""

    def __init__(self, model_file: str, *, add_bos: bool = True, add_eos: bool = False):
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.add_bos, self.add_eos = add_bos, add_eos

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text, add_bos=self.add_bos, add_eos=self.add_eos)

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids])


class HfTokenizerJson:
    """A model's `tokenizer.json` through the `tokenizers` package, special tokens as it configures them."""

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(tokenizer_json)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


_KINDS = {
    "bert": WordPieceTokenizer,
    "clip": ClipBpeTokenizer,
    "sentencepiece": SentencePieceTokenizer,
    "hf": HfTokenizerJson,
}


def load_tokenizer(kind: str, path: str, **kwargs):
    """The tokenizer of `kind` ('bert', 'clip', 'sentencepiece', 'hf') from its vocabulary file `path`."""
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_KINDS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} tokenizer file not found: {path}")
    return _KINDS[kind](path, **kwargs)


def fixed_length(tokenizer, max_length: int) -> Callable[[str], dict[str, np.ndarray]]:
    """text -> {'text_ids': (max_length,) int32, 'text_mask': (max_length,) bool} for any tokenizer here.

    What the input pipeline stores per caption: BERT ids are [CLS] ... [SEP]
    padded with [PAD]; CLIP ids are `clip.tokenize`'s row; SentencePiece and
    tokenizer.json ids are truncated and zero-padded. The mask marks real tokens.
    """
    if isinstance(tokenizer, WordPieceTokenizer):
        def encode(text):
            out = tokenizer.encode(text, max_length=max_length, padding=True)
            return {"text_ids": out["input_ids"], "text_mask": out["attention_mask"].astype(bool)}
    elif isinstance(tokenizer, ClipBpeTokenizer):
        def encode(text):
            ids = tokenizer.tokenize(text, context_length=max_length)[0]
            length = int(np.argmax(ids == tokenizer.eot_id)) + 1
            return {"text_ids": ids, "text_mask": np.arange(max_length) < length}
    elif isinstance(tokenizer, (SentencePieceTokenizer, HfTokenizerJson)):
        def encode(text):
            ids = list(tokenizer.encode(text))[:max_length]
            padded = np.zeros(max_length, np.int32)
            padded[:len(ids)] = ids
            return {"text_ids": padded, "text_mask": np.arange(max_length) < len(ids)}
    else:
        raise TypeError(f"not a tokenizer of data.tokenizers: {type(tokenizer).__name__}")
    return encode
