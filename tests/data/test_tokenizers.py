"""data.tokenizers against the reference tokenizers, on vocabularies trained here from an embedded corpus.

Nothing is downloaded: the WordPiece vocab, CLIP merges and SentencePiece model are trained with
the `tokenizers`/`sentencepiece` packages in a tmp dir, and transformers loads them from there.
"""
import gzip
import itertools
import json
import os

import numpy as np
import pytest

from data.tokenizers import (ClipBpeTokenizer, HfTokenizerJson, SentencePieceTokenizer, WordPieceTokenizer,
                             load_tokenizer)

_SUBJECTS = ["a man", "A woman", "two children", "the dog", "a group of people", "an old lady", "The chef",
             "several players", "a young girl", "THE CROWD"]
_ACTIONS = ["is playing guitar", "is cooking pasta", "runs across the field", "rides a bicycle", "is dancing",
            "swims quickly", "talks to a friend", "is painting a wall", "jumps over a fence", "reads a book",
            "throws a frisbee", "is singing loudly"]
_PLACES = ["on stage", "in the kitchen", "at the beach", "in a park", "near the river", "during the night",
           "under the rain", "inside a small room", "on a busy street"]

_EDGE_SENTENCES = [
    "Café naïve résumé façade jalapeño über Ångström",
    "CAFÉ NAÏVE RÉSUMÉ",
    "他在舞台上弹吉他。小狗在公园里跑。",
    "东京 北京 上海 中国 人 大 小",
    "Emoji time 😀🎸🐶 party 🎉!",
    "Numbers: 1, 2, 3... 3.14, 1,000,000 and 42%",
    "Price is $5.99 (or €4) — cheap!",
    "e-mail me at someone@example.com #hashtag",
    "U.S.A. vs. U.K.: who won?",
    "don't can't won't it's they're we've I'm you'll he'd",
    "Weird   spacing\tand\nnew lines\r\nhere",
    "control\x00chars\x07are\x1bremoved",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "ΟΔΟΣ και οδός στην Αθήνα",
    "Москва Россия привет мир",
    "こんにちは カタカナ ひらがな",
    "안녕하세요 서울",
    "مرحبا بالعالم",
    "brackets [like] {these} <and> (those) ^_^ ~tilde~ `back` |pipe| \\slash/",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "MiXeD CaSe WoRdS aRe FuN",
    "punctuation!!! ??? ... ;;; ::: ,,, '''",
    "a man and a woman are dancing together on stage",
    "the quick brown fox jumps over the lazy dog",
    "a video of a cat playing with a ball of yarn",
    "someone slices tomatoes with a sharp knife",
    "a car drives down a winding mountain road",
    "people are watching fireworks in the sky",
    "a baby laughs while sitting in a high chair",
    "a person is skiing down a snowy slope",
]

TRAIN_CORPUS = [f"{s} {a} {p}" for s, a, p in
                itertools.islice(itertools.product(_SUBJECTS, _ACTIONS, _PLACES), 0, None, 6)] + _EDGE_SENTENCES

# Held out: unseen words, characters the vocab lacks, whitespace/control oddities and literal special tokens.
TEST_CORPUS = [
    "a man is playing a xylophone on stage",
    "A quokka eats leaves near the river",
    "the chef is flambéing crêpes in the kitchen",
    "Crème brûlée at the café",
    "cafe\u0301 with a decomposed accent",
    "他在吃饭。我爱北京天安门",
    "a cat 🐱 and a dog 🐶 and a dragon 🐉",
    "unicode spaces:\u3000ideographic\xa0nbsp\u2009thin\u2028line sep",
    "tabs\tand\vvertical\ftabs and \x85 nel",
    "zero\u200bwidth joiner\u200d and bom\ufeff and replacement\ufffd char",
    "x" * 101 + " long words",
    "a" * 100 + " exactly one hundred",
    "antidisestablishmentarianism is long but not that long",
    "$100 ^^ @@ ## && ** ++ == ~~",
    "The [MASK] is playing guitar [SEP] second [CLS]",
    "a [mask] lowercase special",
    "ΟΔΟΣ ΣΟΦΟΣ",
    "İstanbul ǅ ß ẞ ﬁ ligature",
    "Ⅻ ½ ² ³ ① numbers",
    "",
    "   ",
    "!",
    "a",
    "Ünïcödé ÜBER ALLES",
    "mixed中文and English",
    "a woman rides a bicycle down the busy street at night while singing loudly",
    "THE CROWD IS DANCING UNDER THE RAIN",
]


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
    """Uncased and cased BERT vocabs (vocab.txt) plus the uncased one as tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers")
    root = tmp_path_factory.mktemp("wordpiece")
    for name, lowercase in (("uncased", True), ("cased", False)):
        trainer = tokenizers.BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase)
        trainer.train_from_iterator(TRAIN_CORPUS, vocab_size=800, min_frequency=1, show_progress=False)
        os.makedirs(root / name)
        trainer.save_model(str(root / name))
        # Reloaded from vocab.txt, the tokenizer knows the [CLS]/[SEP] ids its post-processor needs.
        reloaded = tokenizers.BertWordPieceTokenizer(str(root / name / "vocab.txt"), lowercase=lowercase,
                                                     strip_accents=lowercase)
        reloaded.save(str(root / name / "tokenizer.json"))
    return root


def _train_clip_merges(corpus, vocab_size):
    """Byte-level BPE merges with CLIP's conventions: its pre-split regex and `</w>` on word-final tokens."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    from data.tokenizers import _CLIP_PATTERN

    model = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    model.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, end_of_word_suffix="</w>", show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    model.train_from_iterator(corpus, trainer)
    merges = json.loads(model.to_str())["model"]["merges"]
    return [m.split(" ") if isinstance(m, str) else m for m in merges]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """Trained merges as OpenAI's bpe_simple_vocab .txt.gz and as HF's merges.txt."""
    pytest.importorskip("tokenizers")
    root = tmp_path_factory.mktemp("clip")
    lines = [f"{a} {b}" for a, b in _train_clip_merges(TRAIN_CORPUS, vocab_size=1500)]
    with gzip.open(root / "bpe_simple_vocab_test.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(["bpe_simple_vocab_test.txt#version: 0.2", *lines]) + "\n")
    with open(root / "merges.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2", *lines]) + "\n")
    return root


@pytest.fixture(scope="module")
def clip_hf_dir(clip_files):
    """Adds HF's vocab.json in OpenAI's order, built with transformers' byte table rather than ours."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    with open(clip_files / "merges.txt", encoding="utf-8") as f:
        merges = [line.split() for line in f.read().split("\n")[1:] if line]
    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(clip_files / "vocab.json", "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    return clip_files


def _hf_bert(directory, do_lower_case):
    from transformers import BertTokenizer, BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    return [cls.from_pretrained(str(directory), do_lower_case=do_lower_case)
            for cls in (BertTokenizer, BertTokenizerFast, BertTokenizerLegacy)]


@pytest.mark.parity
@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_wordpiece_matches_transformers(wordpiece_dir, lowercase):
    """Every text matches both references, except where they disagree with each other (tested below)."""
    directory = wordpiece_dir / ("uncased" if lowercase else "cased")
    ours = WordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lowercase)
    rust, fast, legacy = _hf_bert(directory, lowercase)
    for text in TRAIN_CORPUS + TEST_CORPUS:
        ids = ours.encode(text)["input_ids"].tolist()
        if not (lowercase and "Σ" in text):
            assert ids == rust(text)["input_ids"] == fast(text)["input_ids"], text
            assert ours.tokenize(text) == rust.tokenize(text), text
        if lowercase or "\u0301" not in text:
            assert ids == legacy(text)["input_ids"], text
            assert ours.tokenize(text) == legacy.tokenize(text), text
    assert ours.vocab_size == len(rust) and ours.unk_id == rust.unk_token_id
    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id) == (
        rust.cls_token_id, rust.sep_token_id, rust.pad_token_id, rust.mask_token_id)


@pytest.mark.parity
def test_wordpiece_final_sigma_follows_python_lower(wordpiece_dir):
    """Uncased: str.lower() (ours, BertTokenizerLegacy, Google's BERT) ends a word with ς; Rust gives σ."""
    directory = wordpiece_dir / "uncased"
    ours = WordPieceTokenizer(str(directory / "vocab.txt"))
    rust, _, legacy = _hf_bert(directory, True)
    assert ours.tokenize("ΟΔΟΣ") == legacy.tokenize("ΟΔΟΣ") == ["οδος"]
    assert rust.tokenize("ΟΔΟΣ") == ["οδοσ"]


@pytest.mark.parity
def test_wordpiece_nfc_follows_rust(wordpiece_dir):
    """Cased: BertTokenizerLegacy NFC-composes "e\\u0301" into "é"; Rust, Google's BERT and we do not."""
    directory = wordpiece_dir / "cased"
    ours = WordPieceTokenizer(str(directory / "vocab.txt"), lowercase=False)
    rust, _, legacy = _hf_bert(directory, False)
    assert ours.tokenize("cafe\u0301") == rust.tokenize("cafe\u0301") != legacy.tokenize("cafe\u0301")
    assert legacy.tokenize("cafe\u0301") == ours.tokenize("café")


@pytest.mark.parity
@pytest.mark.parametrize("max_length", [4, 8, 16, 32])
def test_wordpiece_truncation_and_padding_match_transformers(wordpiece_dir, max_length):
    directory = wordpiece_dir / "uncased"
    ours = WordPieceTokenizer(str(directory / "vocab.txt"))
    rust, _, legacy = _hf_bert(directory, True)
    texts = [t for t in TEST_CORPUS if "Σ" not in t]
    batch = ours.batch_encode(texts, max_length)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(texts), max_length)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == np.int32
    for reference in (rust, legacy):
        expected = reference(texts, max_length=max_length, truncation=True, padding="max_length")
        np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])
        np.testing.assert_array_equal(batch["attention_mask"], expected["attention_mask"])
    for text in texts:
        single = ours.encode(text, max_length=max_length)
        expected = rust(text, max_length=max_length, truncation=True)
        assert single["input_ids"].tolist() == expected["input_ids"]
        assert single["attention_mask"].tolist() == expected["attention_mask"]


def test_wordpiece_encode_layout(wordpiece_dir):
    ours = WordPieceTokenizer(str(wordpiece_dir / "uncased" / "vocab.txt"), max_length=12)
    out = ours.encode("a man is playing guitar on stage", padding=True)
    ids, mask = out["input_ids"], out["attention_mask"]
    n = int(mask.sum())
    assert ids[0] == ours.cls_id and ids[n - 1] == ours.sep_id
    assert (ids[n:] == ours.pad_id).all() and (mask[:n] == 1).all() and (mask[n:] == 0).all()
    long = ours.encode(" ".join(["guitar"] * 50))["input_ids"]
    assert len(long) == 12 and long[-1] == ours.sep_id
    assert len(ours.encode("guitar " * 50, max_length=100)["input_ids"]) == 52
    assert ours.tokenize("x" * 101) == ["[UNK]"]
    assert ours.tokenize("The [MASK] plays")[1] == "[MASK]"


def test_wordpiece_decode_round_trip(wordpiece_dir):
    ours = WordPieceTokenizer(str(wordpiece_dir / "uncased" / "vocab.txt"))
    for text in ["a man is playing guitar on stage", "the chef is cooking pasta in the kitchen",
                 "several players jump over a fence"]:
        assert ours.decode(ours.encode(text, max_length=32, padding=True)["input_ids"]) == text
    assert ours.decode(ours.encode("Café NAÏVE")["input_ids"]) == "cafe naive"


@pytest.mark.parity
def test_clip_bpe_matches_transformers(clip_hf_dir):
    """Parity with transformers' CLIPTokenizer on text where its cleaning agrees with ours.

    transformers 5 only has the `tokenizers`-backed CLIPTokenizer: NFC, whitespace collapse and a
    char-by-char lowercase, with no HTML unescaping or quote straightening. The texts avoid
    "&...;" entities and curly quotes, and Greek capital sigma (word-final Σ lowercases to ς in
    Python, σ in Rust); test_clip_cleaning_differs_from_transformers checks those instead.
    """
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(clip_hf_dir))
    ours = ClipBpeTokenizer(str(clip_hf_dir / "bpe_simple_vocab_test.txt.gz"))
    hf_layout = ClipBpeTokenizer.from_hf_files(str(clip_hf_dir / "vocab.json"), str(clip_hf_dir / "merges.txt"))
    texts = [*TRAIN_CORPUS, *TEST_CORPUS, "a <|endoftext|> inside", "<|startoftext|>x", "it's Bob's; they'LL"]
    assert len(texts) >= 100
    for text in texts:
        ids = ours.encode(text)
        if "Σ" not in text:
            assert [ours.sot_id, *ids, ours.eot_id] == reference(text)["input_ids"], text
        assert hf_layout.encode(text) == ids, text
    assert ours.vocab_size == len(reference) == len(ours.encoder)
    assert (ours.sot_id, ours.eot_id) == (reference.bos_token_id, reference.eos_token_id)
    assert ours.encoder == hf_layout.encoder


@pytest.mark.parity
def test_clip_cleaning_differs_from_transformers(clip_hf_dir):
    """Like ftfy, OpenAI's basic_clean and str.lower(): entities unescaped, quotes straightened, final ς."""
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(clip_hf_dir))
    ours = ClipBpeTokenizer(str(clip_hf_dir / "bpe_simple_vocab_test.txt.gz"))
    assert ours.clean("Tom &amp;amp; Jerry&#39;s  \n CAFE\u0301 ΟΔΟΣ") == "tom & jerry's café οδος"
    for text, equivalent in [("a man’s “guitar”", "a man's \"guitar\""), ("fish &amp; chips", "fish & chips"),
                             ("ΟΔΟΣ", "οδος")]:
        assert ours.encode(text) == ours.encode(equivalent) == reference(equivalent)["input_ids"][1:-1]
        assert ours.encode(text) != reference(text)["input_ids"][1:-1]


def test_clip_tokenize_context_semantics(clip_files):
    ours = ClipBpeTokenizer(str(clip_files / "bpe_simple_vocab_test.txt.gz"))
    short = "a man is playing guitar on stage"
    long = " ".join([short] * 20)
    ids_short, ids_long = ours.encode(short), ours.encode(long)
    assert len(ids_long) > 77
    out = ours.tokenize([short, long])
    assert out.shape == (2, 77) and out.dtype == np.int32
    row = [ours.sot_id, *ids_short, ours.eot_id]
    assert out[0, :len(row)].tolist() == row and not out[0, len(row):].any()
    assert out[1].tolist() == [ours.sot_id, *ids_long[:75], ours.eot_id]
    np.testing.assert_array_equal(ours.tokenize(short), out[:1])
    assert ours.tokenize(short, context_length=8)[0].tolist() == [ours.sot_id, *ids_short[:6], ours.eot_id]
    with pytest.raises(ValueError, match="context length 77"):
        ours.tokenize(long, truncate=False)
    assert ours.decode(out[0]) == short
    assert ours.decode(ours.tokenize("Café 🎸 über!")[0]) == "café 🎸 über !"


def test_clip_reads_plain_merges_and_caps_merge_count(clip_files, tmp_path):
    with gzip.open(clip_files / "bpe_simple_vocab_test.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read()
    plain = tmp_path / "bpe.txt"
    plain.write_text(text, encoding="utf-8")
    gz = ClipBpeTokenizer(str(clip_files / "bpe_simple_vocab_test.txt.gz"))
    assert ClipBpeTokenizer(str(plain)).encoder == gz.encoder
    # OpenAI's file holds more merges than the 48894 its vocabulary uses; the rest are ignored.
    many = tmp_path / "bpe_many.txt"
    many.write_text("\n".join(["header", *(f"x{i} y" for i in range(48894 + 5))]), encoding="utf-8")
    full = ClipBpeTokenizer(str(many))
    assert (full.vocab_size, full.sot_id, full.eot_id) == (49408, 49406, 49407)


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("sentencepiece")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN_CORPUS), model_prefix=str(root / "tokenizer"), vocab_size=512,
        model_type="bpe", byte_fallback=True, character_coverage=0.995, minloglevel=2,
        # LLaMA's trainer spec: raw text in, whitespace kept, digits split.
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, allow_whitespace_only_pieces=True)
    return root


@pytest.mark.parity
def test_sentencepiece_matches_llama_tokenizer(sentencepiece_dir):
    """transformers 5's LlamaTokenizer matches sentencepiece except on leading whitespace.

    Its Metaspace pre-tokenizer skips the "▁" dummy prefix when the text already starts with a
    space; sentencepiece (and transformers 4's legacy slow LlamaTokenizer) always adds it.
    """
    from transformers import LlamaTokenizer

    # LLaMA's tokenizer_config.json sets add_bos_token; without one transformers adds no BOS.
    reference = LlamaTokenizer.from_pretrained(str(sentencepiece_dir), add_bos_token=True)
    ours = SentencePieceTokenizer(str(sentencepiece_dir / "tokenizer.model"))
    for text in TRAIN_CORPUS + TEST_CORPUS:
        if not text[:1].isspace():
            assert ours.encode(text) == reference(text)["input_ids"], text
    assert ours.encode(" a man") == [ours.bos_id, ours.processor.piece_to_id("▁"), *ours.encode("a man")[1:]]
    assert reference(" a man")["input_ids"] == ours.encode("a man")
    assert (ours.bos_id, ours.eos_id) == (reference.bos_token_id, reference.eos_token_id)
    assert ours.vocab_size == len(reference)


def test_sentencepiece_wrapper(sentencepiece_dir):
    model_file = str(sentencepiece_dir / "tokenizer.model")
    ours = load_tokenizer("sentencepiece", model_file)
    with_eos = SentencePieceTokenizer(model_file, add_bos=False, add_eos=True)
    assert isinstance(ours, SentencePieceTokenizer) and ours.vocab_size == 512
    for text in TEST_CORPUS:
        ids = ours.encode(text)
        assert ids[0] == ours.bos_id and ids[1:] == ours.processor.encode(text)
        assert with_eos.encode(text) == ids[1:] + [ours.eos_id]
    assert ours.decode(ours.encode("a man is playing guitar")) == "a man is playing guitar"
    dragon = ours.encode("🐉 dragon")
    assert "<0xF0>" in ours.processor.id_to_piece(dragon) and ours.decode(dragon) == "🐉 dragon"


def test_hf_tokenizer_json_round_trip(wordpiece_dir):
    ours = HfTokenizerJson(str(wordpiece_dir / "uncased" / "tokenizer.json"))
    bert = WordPieceTokenizer(str(wordpiece_dir / "uncased" / "vocab.txt"))
    for text in TEST_CORPUS:
        if "Σ" not in text:
            assert ours.encode(text) == bert.encode(text)["input_ids"].tolist(), text
    text = "a man is playing guitar on stage"
    assert ours.decode(ours.encode(text)) == text
    assert ours.encode(text, add_special_tokens=False) == ours.encode(text)[1:-1]
    assert ours.token_to_id("[MASK]") == bert.mask_id and ours.vocab_size == bert.vocab_size


def test_load_tokenizer(wordpiece_dir, clip_files):
    vocab = str(wordpiece_dir / "uncased" / "vocab.txt")
    bert = load_tokenizer("bert", vocab, max_length=16)
    assert isinstance(bert, WordPieceTokenizer) and bert.max_length == 16
    clip = load_tokenizer("clip", str(clip_files / "bpe_simple_vocab_test.txt.gz"), context_length=32)
    assert isinstance(clip, ClipBpeTokenizer) and clip.tokenize("a man").shape == (1, 32)
    assert isinstance(load_tokenizer("hf", str(wordpiece_dir / "uncased" / "tokenizer.json")), HfTokenizerJson)
    with pytest.raises(ValueError, match="'bert', 'clip', 'hf', 'sentencepiece'"):
        load_tokenizer("gpt2", vocab)
    missing = str(wordpiece_dir / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_tokenizer("bert", missing)


def test_wordpiece_errors(wordpiece_dir, tmp_path):
    ours = WordPieceTokenizer(str(wordpiece_dir / "uncased" / "vocab.txt"))
    with pytest.raises(ValueError, match="max_length"):
        ours.encode("a man", padding=True)
    with pytest.raises(ValueError, match="max_length"):
        ours.batch_encode(["a man"])
    with pytest.raises(ValueError, match="no room"):
        ours.encode("a man", max_length=1)
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\na\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        WordPieceTokenizer(str(bad))
