"""Annotation readers on files written in each official format."""
import json

import pytest

from data import annotations


def test_classification_csv_comma_and_space(tmp_path):
    (tmp_path / "k400.csv").write_text("abseiling/a b.mp4,0\nzumba/x.mp4,399\n\n")
    (tmp_path / "ssv2.txt").write_text("1.webm 12\n2.webm 7\n")
    assert annotations.read_classification_csv(tmp_path / "k400.csv", root="/data") == [
        {"path": "/data/abseiling/a b.mp4", "label": 0},
        {"path": "/data/zumba/x.mp4", "label": 399},
    ]
    assert annotations.read_classification_csv(tmp_path / "ssv2.txt") == [
        {"path": "1.webm", "label": 12},
        {"path": "2.webm", "label": 7},
    ]


@pytest.mark.parametrize("line", ["only_a_path.mp4", "x.mp4,notanint"])
def test_classification_csv_bad_line_names_file_and_line(tmp_path, line):
    f = tmp_path / "bad.csv"
    f.write_text(f"ok.mp4,1\n{line}\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        annotations.read_classification_csv(f)


def test_ssv2_template_lookup(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({
        "Holding something next to something": "3", "Pushing something from left to right": "0",
    }))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
        {"id": "42", "label": "pushing cup from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["cup"]},
    ]))
    records = annotations.read_ssv2(tmp_path / "labels.json", tmp_path / "train.json", root="/v")
    assert records == [{"path": "/v/78687.webm", "label": 3}, {"path": "/v/42.webm", "label": 0}]
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "1", "template": "Unknown [something]"}]))
    with pytest.raises(ValueError, match="Unknown something"):
        annotations.read_ssv2(tmp_path / "labels.json", tmp_path / "bad.json")


def test_vindlu_json_and_retrieval_pairs(tmp_path):
    items = [
        {"video": "video7020.mp4", "caption": "a woman decorates a cake"},
        {"image": "coco/1.jpg", "caption": ["a dog", "a brown dog runs"]},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(items))
    records = annotations.read_vindlu_json(tmp_path / "ann.json", root="/m")
    assert records == [
        {"path": "/m/video7020.mp4", "captions": ("a woman decorates a cake",)},
        {"path": "/m/coco/1.jpg", "captions": ("a dog", "a brown dog runs")},
    ]
    texts, text_to_video = annotations.retrieval_pairs(records)
    assert texts == ["a woman decorates a cake", "a dog", "a brown dog runs"]
    assert text_to_video == [0, 1, 1]
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "x.mp4"}]))
    with pytest.raises(ValueError, match="item 0"):
        annotations.read_vindlu_json(tmp_path / "bad.json")


def test_webvid_csv(tmp_path):
    (tmp_path / "webvid.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        '31353427,https://example.invalid/a.mp4,PT00H00M15S,1052_1,"Aerial, shot of a lake"\n'
    )
    assert annotations.read_webvid_csv(tmp_path / "webvid.csv", root="/w") == [
        {"path": "/w/1052_1/31353427.mp4", "captions": ("Aerial, shot of a lake",)}
    ]
    (tmp_path / "bad.csv").write_text("id,name\n1,x\n")
    with pytest.raises(ValueError, match="page_dir"):
        annotations.read_webvid_csv(tmp_path / "bad.csv")


def test_mvbench_items_with_and_without_bound(tmp_path):
    items = [{"video": "a.mp4", "question": "What happened after?", "candidates": ["sat", "ran", "ate"],
              "answer": "ran", "start": 1.5, "end": 7.0}]
    (tmp_path / "action_sequence.json").write_text(json.dumps(items))
    (rec,) = annotations.read_mvbench(tmp_path / "action_sequence.json", root="/mv", bound=True)
    assert rec == {"path": "/mv/a.mp4", "question": "What happened after?",
                   "candidates": ("sat", "ran", "ate"), "answer": 1, "bound": (1.5, 7.0)}
    (rec,) = annotations.read_mvbench(tmp_path / "action_sequence.json")
    assert rec["bound"] is None
    items[0]["answer"] = "flew"
    (tmp_path / "bad.json").write_text(json.dumps(items))
    with pytest.raises(ValueError, match="candidates"):
        annotations.read_mvbench(tmp_path / "bad.json")
