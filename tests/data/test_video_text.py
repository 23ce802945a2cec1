"""Video-text examples: a caption drawn per example (train) or the first (eval), tokenized to fixed length."""
import numpy as np

from data.pipeline import eval_batches, train_iter
from data.sources import VideoText
from data.tokenizers import WordPieceTokenizer, fixed_length
from test_bad_media import _write_h264

WORDS = ["a", "dog", "runs", "cat", "sleeps", "man", "plays", "guitar", "on", "the", "grass", "."]


def _setup(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    records = []
    captions = [("a dog runs on the grass.", "the dog runs."), ("a cat sleeps.",), ("a man plays guitar.", "a man plays.")]
    for i, caps in enumerate(captions):
        _write_h264(tmp_path / f"v{i}.mp4", 8)
        records.append({"path": str(tmp_path / f"v{i}.mp4"), "captions": caps})
    return WordPieceTokenizer(str(tmp_path / "vocab.txt")), records


def test_fixed_length_wordpiece(tmp_path):
    tokenizer, _ = _setup(tmp_path)
    out = fixed_length(tokenizer, 8)("a cat sleeps.")
    ids = [tokenizer.cls_id] + [5 + WORDS.index(w) for w in ("a", "cat", "sleeps", ".")] + [tokenizer.sep_id]
    np.testing.assert_array_equal(out["text_ids"], ids + [tokenizer.pad_id] * 2)
    np.testing.assert_array_equal(out["text_mask"], [True] * 6 + [False] * 2)


def test_train_draws_captions_eval_takes_the_first(tmp_path):
    tokenizer, records = _setup(tmp_path)
    encode = fixed_length(tokenizer, 12)
    common = dict(frames=4, size=16, encode_text=encode)
    it = train_iter(VideoText(records, train=True, crop="rrc", **common), global_batch_size=3, seed=0,
                    keys=("video", "text_ids", "text_mask", "index"))
    drawn = {i: set() for i in range(3)}
    for _ in range(20):
        batch = next(it)
        assert batch["video"].shape == (3, 4, 16, 16, 3) and batch["text_ids"].shape == (3, 12)
        for i, ids in zip(batch["index"], batch["text_ids"]):
            drawn[int(i)].add(tuple(ids))
    for i, record in enumerate(records):  # every caption of every video drawn, nothing else
        assert drawn[i] == {tuple(encode(c)["text_ids"]) for c in record["captions"]}

    (batch,) = list(eval_batches(VideoText(records, train=False, **common), global_batch_size=3,
                                 keys=("video", "text_ids")))
    for row, record in zip(batch["text_ids"], records):
        np.testing.assert_array_equal(row, encode(record["captions"][0])["text_ids"])


def test_make_source_reads_vindlu_json_and_tokenizes(tmp_path):
    import json

    import ml_collections

    from vfm_jax.input import make_source

    tokenizer, records = _setup(tmp_path)
    items = [{"video": f"v{i}.mp4", "caption": list(r["captions"])} for i, r in enumerate(records)]
    (tmp_path / "train.json").write_text(json.dumps(items))
    cfg = ml_collections.ConfigDict(dict(
        name="video_text", annotation_format="vindlu", train_list=str(tmp_path / "train.json"),
        root=str(tmp_path), tokenizer="bert", tokenizer_file=str(tmp_path / "vocab.txt"),
        max_text_length=12, frames=4, size=16, sampler="vindlu", stride=1, crop="rrc",
        rrc_scale=(0.5, 1.0), flip=True, rand_augment=False, short_side=16, test_clips=1,
        test_crops=1, min_frames=1, max_failure_rate=0.5,
    ))
    source = make_source(cfg, "train")
    example = source.load(source[1], np.random.default_rng(0))
    np.testing.assert_array_equal(example["text_ids"], fixed_length(tokenizer, 12)("a cat sleeps.")["text_ids"])
    assert example["video"].shape == (4, 16, 16, 3)
