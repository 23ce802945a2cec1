"""Clip transforms: one random draw per clip, the official crop/RandAugment recipes, normalisation."""
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from data import transforms as tf


def _position_clip(frames: int = 4, height: int = 120, width: int = 200) -> np.ndarray:
    """R = x, G = y, B = 20 * t: frames differ only by a constant, pixels name their position."""
    clip = np.zeros((frames, height, width, 3), np.uint8)
    clip[..., 0] = np.arange(width)[None, None, :]
    clip[..., 1] = np.arange(height)[None, :, None]
    clip[..., 2] = 20 * np.arange(frames)[:, None, None]
    return clip


def _smooth_frame(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([128 + 100 * np.sin(x / 9), 128 + 100 * np.cos(y / 7),
                     128 + 60 * np.sin((x + y) / 11)], -1).astype(np.uint8)


GEOMETRIC_OPS = {
    "random_resized_crop": lambda c, r: tf.random_resized_crop(c, r, 64),
    "random_resized_crop_bicubic": lambda c, r: tf.random_resized_crop(c, r, 64, interpolation="bicubic"),
    "multi_scale_crop": lambda c, r: tf.multi_scale_crop(c, r, 64),
    "multi_scale_crop_random_offset": lambda c, r: tf.multi_scale_crop(c, r, 64, fix_crop=False),
    "horizontal_flip": lambda c, r: tf.horizontal_flip(c, r),
    "resize_short": lambda c, r: tf.resize_short(c, 50),
    "center_crop": lambda c, r: tf.center_crop(c, 80),
}


@pytest.mark.parametrize("name", GEOMETRIC_OPS)
def test_geometric_ops_apply_one_geometry_to_all_frames(name):
    """Frames that differ by a constant keep identical R/G (position) planes: same crop, flip, resize."""
    clip = _position_clip()
    for seed in range(10):
        out = GEOMETRIC_OPS[name](clip, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[0] == clip.shape[0]
        for t in range(1, clip.shape[0]):
            np.testing.assert_array_equal(out[t, ..., :2], out[0, ..., :2])
            np.testing.assert_array_equal(out[t, ..., 2], 20 * t)


ALL_OPS = {**GEOMETRIC_OPS, "rand_augment": tf.rand_augment,
           "rand_augment_m10": lambda c, r: tf.rand_augment(c, r, num_ops=8, magnitude=10)}


@pytest.mark.parametrize("name", ALL_OPS)
def test_identical_frames_stay_identical(name):
    frame = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    clip = np.stack([frame] * 3)
    for seed in range(10):
        out = ALL_OPS[name](clip, np.random.default_rng(seed))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out[1:], out[:1].repeat(2, axis=0))


def test_three_crop_keeps_frames_consistent():
    clip = _position_clip()
    out = tf.three_crop(clip, 100)
    assert out.shape == (3, 4, 100, 100, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 1:, ..., :2], out[:, :1, ..., :2].repeat(3, axis=1))


# --- RandomResizedCrop ---------------------------------------------------------


def test_random_resized_crop_params_distribution():
    rng = np.random.default_rng(0)
    height, width = 120, 200
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    draws = np.array([tf.random_resized_crop_params(height, width, rng, scale, ratio) for _ in range(4000)])
    top, left, h, w = draws.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width) & (h > 0) & (w > 0))
    # w and h are each rounded by at most 1/2 pixel, which bounds the area and ratio error.
    area = h * w / (height * width)
    slack = (0.5 / h + 0.5 / w) * 1.05 + 0.5 ** 2 / (h * w)
    assert np.all(area >= scale[0] * (1 - slack)) and np.all(area <= scale[1] * (1 + slack))
    aspect = w / h
    assert np.all(aspect >= ratio[0] * (1 - 0.5 / w) / (1 + 0.5 / h))
    assert np.all(aspect <= ratio[1] * (1 + 0.5 / w) / (1 - 0.5 / h))
    # The accepted draws fill the ranges (log-uniform ratio: both ends are reached). A box
    # must fit the 120 x 200 frame with w / h <= 4 / 3, so its area is at most 120 * 160.
    assert area.min() < 0.1 and area.max() > 0.75
    assert aspect.min() < 0.8 and aspect.max() > 1.25
    # On a square frame acceptance is symmetric in w/h, so log(w / h) averages to 0.
    square = np.array([tf.random_resized_crop_params(160, 160, rng, scale, ratio) for _ in range(4000)])
    assert abs(np.mean(np.log(square[:, 3] / square[:, 2]))) < 0.01


def test_random_resized_crop_offsets_are_uniform():
    rng = np.random.default_rng(1)
    draws = np.array([tf.random_resized_crop_params(60, 40, rng, (1 / 6, 1 / 6), (1, 1)) for _ in range(4000)])
    assert np.all(draws[:, 2:] == 20)
    tops, lefts = np.bincount(draws[:, 0], minlength=41), np.bincount(draws[:, 1], minlength=21)
    assert len(tops) == 41 and len(lefts) == 21 and tops.min() > 50 and lefts.min() > 120


@pytest.mark.parametrize("height, width, scale, ratio, want", [
    # No try fits: w >= 100 * sqrt(5). Input ratio 1 < 10: full width, h = round(100 / 10), centred.
    (100, 100, (0.5, 1.0), (10, 20), (45, 0, 10, 100)),
    # Input ratio 10 > 0.2: full height, w = round(100 * 0.2), centred.
    (100, 1000, (0.5, 1.0), (0.1, 0.2), (0, 490, 100, 20)),
    # Input ratio inside the range: the whole image.
    (90, 100, (2.0, 3.0), (0.5, 2.0), (0, 0, 90, 100)),
])
def test_random_resized_crop_fallback(height, width, scale, ratio, want):
    for seed in range(5):
        assert tf.random_resized_crop_params(height, width, np.random.default_rng(seed), scale, ratio) == want


def test_random_resized_crop_cuts_the_drawn_box():
    """With size equal to the box there is no resize: the output is the box, pixel for pixel."""
    clip = _position_clip(height=60, width=40)
    scale, ratio = (1 / 6, 1 / 6), (1, 1)   # always a 20 x 20 box
    for seed in range(20):
        top, left, h, w = tf.random_resized_crop_params(60, 40, np.random.default_rng(seed), scale, ratio)
        assert (h, w) == (20, 20)
        out = tf.random_resized_crop(clip, np.random.default_rng(seed), 20, scale=scale, ratio=ratio)
        np.testing.assert_array_equal(out, clip[:, top:top + 20, left:left + 20])
        np.testing.assert_array_equal(out[0, 0, :, 0], left + np.arange(20))
        np.testing.assert_array_equal(out[0, :, 0, 1], top + np.arange(20))


@pytest.mark.parity
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_random_resized_crop_resize_matches_torch(interpolation):
    """Box plus resize agree with torch's antialiased interpolate (PIL's filters) to 1 level."""
    import torch

    clip = np.stack([_smooth_frame(90, 130)] * 2)
    for seed in range(5):
        top, left, h, w = tf.random_resized_crop_params(90, 130, np.random.default_rng(seed))
        out = tf.random_resized_crop(clip, np.random.default_rng(seed), 48, interpolation=interpolation)
        box = torch.from_numpy(clip[:, top:top + h, left:left + w]).permute(0, 3, 1, 2).float()
        want = torch.nn.functional.interpolate(box, size=(48, 48), mode=interpolation, antialias=True,
                                               align_corners=False)
        want = want.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
        assert np.abs(out.astype(np.float32) - want).max() <= 1


# --- MultiScaleCrop --------------------------------------------------------------


def _tsn_boxes(height, width, size, scales, max_distort, more_fix_crop):
    """Every (top, left, h, w) TSN's GroupMultiScaleCrop can return, from its description."""
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    snap = [size if abs(x - size) < 3 else x for x in sides]
    boxes = set()
    for (i, h), (j, w) in itertools.product(enumerate(snap), enumerate(snap)):
        if abs(i - j) > max_distort:
            continue
        ws, hs = (width - w) // 4, (height - h) // 4
        positions = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
        if more_fix_crop:
            positions += [(0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
                          (ws, hs), (3 * ws, hs), (ws, 3 * hs), (3 * ws, 3 * hs)]
        boxes |= {(y, x, h, w) for x, y in positions}
    return boxes


@pytest.mark.parametrize("height, width, size, more", [
    (240, 320, 224, True), (240, 320, 224, False), (320, 240, 112, True), (226, 300, 224, True),
])
def test_multi_scale_crop_boxes_are_tsn_boxes(height, width, size, more):
    scales = (1, .875, .75, .66)
    want = _tsn_boxes(height, width, size, scales, 1, more)
    rng = np.random.default_rng(0)
    got = {tf.multi_scale_crop_params(height, width, rng, size, scales, more_fix_crop=more) for _ in range(6000)}
    assert got == want


def test_multi_scale_crop_snaps_sides_near_the_output_size():
    # min side 226: int(226 * 1) = 226 is within 3 of 224 and snaps to it.
    rng = np.random.default_rng(0)
    sides = {tf.multi_scale_crop_params(226, 300, rng, 224)[2] for _ in range(500)}
    assert sides == {224, int(226 * .875), int(226 * .75), int(226 * .66)}


def test_multi_scale_crop_clamps_a_snapped_side_to_the_image():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = tf.multi_scale_crop_params(222, 300, rng, 224)
        assert top >= 0 and left >= 0 and top + h <= 222 and left + w <= 300


def test_multi_scale_crop_random_offsets():
    rng = np.random.default_rng(0)
    draws = np.array([tf.multi_scale_crop_params(240, 320, rng, 224, fix_crop=False) for _ in range(3000)])
    top, left, h, w = draws.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 240) & (left + w <= 320))
    assert len(set(left.tolist())) > 100


def test_multi_scale_crop_resizes_the_drawn_box():
    clip = np.stack([_smooth_frame(120, 160), 255 - _smooth_frame(120, 160)])
    for seed in range(5):
        top, left, h, w = tf.multi_scale_crop_params(120, 160, np.random.default_rng(seed), 64)
        out = tf.multi_scale_crop(clip, np.random.default_rng(seed), 64)
        want = [np.asarray(Image.fromarray(f[top:top + h, left:left + w]).resize((64, 64), Image.BILINEAR))
                for f in clip]
        np.testing.assert_array_equal(out, np.stack(want))


# --- flip, resize, deterministic crops ---------------------------------------------


def test_horizontal_flip():
    clip = _position_clip()
    np.testing.assert_array_equal(tf.horizontal_flip(clip, np.random.default_rng(0), p=1.0), clip[:, :, ::-1])
    np.testing.assert_array_equal(tf.horizontal_flip(clip, np.random.default_rng(0), p=0.0), clip)
    rng = np.random.default_rng(0)
    flips = [tf.horizontal_flip(clip, rng)[0, 0, 0, 0] != 0 for _ in range(2000)]
    assert abs(np.mean(flips) - 0.5) < 0.05


@pytest.mark.parametrize("shape, size, want", [
    ((240, 320), 224, (224, 298)),    # 224 * 320 / 240 = 298.67, truncated as torchvision does
    ((320, 240), 224, (298, 224)),
    ((100, 100), 224, (224, 224)),
    ((480, 854), 224, (224, 398)),
    ((1920, 1080), 256, (455, 256)),
    ((224, 300), 224, (224, 300)),
])
def test_resize_short_sizes(shape, size, want):
    clip = np.zeros((2, *shape, 3), np.uint8)
    out = tf.resize_short(clip, size)
    assert out.shape == (2, *want, 3) and out.dtype == np.uint8


def test_resize_short_matches_pil():
    clip = np.stack([_smooth_frame(90, 130)] * 2)
    out = tf.resize_short(clip, 60, interpolation="bicubic")
    want = np.asarray(Image.fromarray(clip[0]).resize((86, 60), Image.BICUBIC))
    np.testing.assert_array_equal(out[1], want)


def test_center_crop_offsets():
    clip = _position_clip(height=10, width=15)
    out = tf.center_crop(clip, 4)
    # torchvision: top = round(6 / 2) = 3, left = round(11 / 2) = 6.
    np.testing.assert_array_equal(out[0, 0, :, 0], 6 + np.arange(4))
    np.testing.assert_array_equal(out[0, :, 0, 1], 3 + np.arange(4))


@pytest.mark.parametrize("height, width, size, want", [
    (100, 160, 100, [(0, 0), (0, 30), (0, 60)]),     # landscape: left, centre, right
    (100, 161, 100, [(0, 0), (0, 31), (0, 61)]),     # odd margin: centre is ceil(61 / 2)
    (160, 100, 100, [(0, 0), (30, 0), (60, 0)]),     # portrait: top, centre, bottom
    (120, 180, 100, [(10, 0), (10, 40), (10, 80)]),  # short side centred
    (120, 120, 100, [(10, 0), (10, 10), (10, 20)]),  # square: along the width
])
def test_three_crop_positions(height, width, size, want):
    clip = _position_clip(frames=2, height=height, width=width)
    out = tf.three_crop(clip, size)
    assert out.shape == (3, 2, size, size, 3)
    got = [(int(crop[0, 0, 0, 1]), int(crop[0, 0, 0, 0])) for crop in out]
    assert got == want
    for crop, (y, x) in zip(out, want):
        np.testing.assert_array_equal(crop, clip[:, y:y + size, x:x + size])


# --- RandAugment -------------------------------------------------------------------

TIMM_RAND_INCREASING = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
]
TIMM_RAND = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
]


def test_rand_augment_op_lists_match_timm():
    assert list(tf.RAND_INCREASING_TRANSFORMS) == TIMM_RAND_INCREASING
    assert list(tf.RAND_TRANSFORMS) == TIMM_RAND
    assert set(tf.RAND_AUGMENT_OPS) == set(TIMM_RAND_INCREASING) | set(TIMM_RAND)


# name: (argument at level 0, at level 10 with sign +1, at level 10 with sign -1); None: no argument.
LEVEL_RANGES = {
    "AutoContrast": None, "Equalize": None, "Invert": None,
    "Rotate": (0.0, 30.0, -30.0),
    "PosterizeIncreasing": (4, 0, 0), "Posterize": (0, 4, 4),
    "SolarizeIncreasing": (256, 0, 0), "Solarize": (0, 256, 256),
    "SolarizeAdd": (0, 110, 110),
    **{name + "Increasing": (1.0, 1.9, 0.1) for name in ("Color", "Contrast", "Brightness", "Sharpness")},
    **{name: (0.1, 1.9, 1.9) for name in ("Color", "Contrast", "Brightness", "Sharpness")},
    "ShearX": (0.0, 0.3, -0.3), "ShearY": (0.0, 0.3, -0.3),
    "TranslateXRel": (0.0, 0.45, -0.45), "TranslateYRel": (0.0, 0.45, -0.45),
}


@pytest.mark.parametrize("name", sorted(LEVEL_RANGES))
def test_rand_augment_level_to_arg_ranges(name):
    level_to_arg = tf.RAND_AUGMENT_OPS[name].level_to_arg
    if LEVEL_RANGES[name] is None:
        assert level_to_arg is None
        return
    at0, at10, at10_neg = LEVEL_RANGES[name]
    assert level_to_arg(0.0, 1) == pytest.approx(at0) and level_to_arg(0.0, -1) == pytest.approx(at0)
    assert level_to_arg(10.0, 1) == pytest.approx(at10)
    assert level_to_arg(10.0, -1) == pytest.approx(at10_neg)
    assert level_to_arg(5.0, 1) == pytest.approx((at0 + at10) / 2, abs=1)


def test_rand_augment_level_mid_values():
    ops = tf.RAND_AUGMENT_OPS
    assert ops["PosterizeIncreasing"].level_to_arg(7.0, 1) == 4 - int(0.7 * 4) == 2
    assert ops["SolarizeIncreasing"].level_to_arg(7.0, 1) == 256 - int(0.7 * 256) == 77
    assert ops["ColorIncreasing"].level_to_arg(7.0, -1) == pytest.approx(1 - 0.63)
    assert ops["Rotate"].level_to_arg(7.0, -1) == pytest.approx(-21.0)


IDENTITY_AT_LEVEL_0 = ["Rotate", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                       "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                       "TranslateYRel"]


@pytest.mark.parametrize("name", IDENTITY_AT_LEVEL_0)
@pytest.mark.parametrize("resample", [Image.BILINEAR, Image.BICUBIC])
def test_rand_augment_ops_are_identity_at_level_0(name, resample):
    frame = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    op = tf.RAND_AUGMENT_OPS[name]
    out = op.apply(Image.fromarray(frame), op.level_to_arg(0.0, 1), resample)
    np.testing.assert_array_equal(np.asarray(out), frame)


def test_rand_augment_op_semantics():
    frame = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    img = Image.fromarray(frame)
    ops = tf.RAND_AUGMENT_OPS

    def run(name, arg):
        return np.asarray(ops[name].apply(img, arg, Image.BICUBIC)).astype(int)

    np.testing.assert_array_equal(run("Invert", None), 255 - frame)
    np.testing.assert_array_equal(run("SolarizeIncreasing", 0), 255 - frame)
    np.testing.assert_array_equal(run("SolarizeIncreasing", 128), np.where(frame < 128, frame, 255 - frame))
    np.testing.assert_array_equal(run("PosterizeIncreasing", 0), 0)
    np.testing.assert_array_equal(run("PosterizeIncreasing", 2), frame & 0b11000000)
    np.testing.assert_array_equal(run("SolarizeAdd", 110),
                                  np.where(frame < 128, np.minimum(frame.astype(int) + 110, 255), frame))
    # A relative x-translation of 0.25 * 40 = 10 pixels samples input x + 10; the rest is gray fill.
    shifted = run("TranslateXRel", 0.25)
    np.testing.assert_array_equal(shifted[:, :30], frame[:, 10:])
    np.testing.assert_array_equal(shifted[:, 30:], 128)
    shifted = run("TranslateYRel", -0.25)
    np.testing.assert_array_equal(shifted[5:], frame[:15])
    np.testing.assert_array_equal(shifted[:5], 128)


def test_rand_augment_params_statistics():
    rng = np.random.default_rng(0)
    draws = [tf.rand_augment_params(rng, num_ops=4, magnitude=7, magnitude_std=0.5) for _ in range(3000)]
    counts = np.array([len(d) for d in draws])
    assert abs(counts.mean() - 2.0) < 0.06 and counts.max() == 4 and counts.min() == 0
    names = [name for d in draws for name, _ in d]
    assert set(names) == set(TIMM_RAND_INCREASING)
    freq = np.array([names.count(n) for n in TIMM_RAND_INCREASING]) / len(names)
    assert np.all(np.abs(freq - 1 / 15) < 0.012)
    # Ops are picked with replacement, as timm's np.random.choice(..., replace=True).
    assert any(len({n for n, _ in d}) < len(d) for d in draws)
    rotations = np.array([arg for d in draws for name, arg in d if name == "Rotate"])
    assert abs(np.abs(rotations).mean() - 21.0) < 0.3 and abs(np.abs(rotations).std() - 1.5) < 0.3
    assert abs(np.mean(rotations > 0) - 0.5) < 0.07


def test_rand_augment_magnitude_is_clipped_to_10():
    rng = np.random.default_rng(0)
    args = [arg for _ in range(2000) for name, arg in tf.rand_augment_params(rng, magnitude=10, magnitude_std=0.5)
            if name == "Rotate"]
    assert max(abs(a) for a in args) == 30.0
    assert 0.4 < np.mean([abs(a) == 30.0 for a in args]) < 0.6


def test_rand_augment_without_noise_uses_the_exact_level():
    rng = np.random.default_rng(0)
    args = {round(arg, 12) for _ in range(500)
            for name, arg in tf.rand_augment_params(rng, magnitude=7, magnitude_std=0) if name == "ShearX"}
    assert args == {0.21, -0.21}


def test_rand_augment_is_one_draw_for_the_clip():
    """Each frame gets what it would get alone: the draws do not depend on the frames or their count."""
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    for seed in range(15):
        together = tf.rand_augment(frames, np.random.default_rng(seed), magnitude=9)
        for t in range(3):
            alone = tf.rand_augment(frames[t:t + 1], np.random.default_rng(seed), magnitude=9)
            np.testing.assert_array_equal(together[t], alone[0])
    a = tf.rand_augment(frames, np.random.default_rng(3))
    np.testing.assert_array_equal(a, tf.rand_augment(frames, np.random.default_rng(3)))
    outputs = {tf.rand_augment(frames, np.random.default_rng(s)).tobytes() for s in range(10)}
    assert len(outputs) > 5


# --- normalisation and validation ----------------------------------------------------


def test_normalization_presets():
    assert tf.NORMALIZATION["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert tf.NORMALIZATION["clip"] == ((0.48145466, 0.4578275, 0.40821073),
                                        (0.26862954, 0.26130258, 0.27577711))
    assert tf.NORMALIZATION["slowfast"] == ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))


@pytest.mark.parametrize("preset", ["imagenet", "clip", "slowfast"])
def test_normalize(preset):
    clip = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    mean, std = (np.array(v) for v in tf.NORMALIZATION[preset])
    want = (clip / 255.0 - mean) / std
    out = tf.normalize(clip, preset)
    assert out.dtype == np.float32 and out.shape == clip.shape
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tf.normalize(clip / 255.0, preset), want, rtol=1e-5, atol=1e-5)
    assert math.isclose(tf.normalize(np.full((1, 3), 255, np.uint8), preset)[0, 0], (1 - mean[0]) / std[0],
                        rel_tol=1e-6)


@pytest.mark.parametrize("call", [
    lambda: tf.normalize(np.zeros((2, 4, 4, 3), np.uint8), "nope"),
    lambda: tf.normalize(np.zeros((2, 4, 4, 4), np.uint8), "clip"),
    lambda: tf.normalize(np.zeros((2, 4, 4, 3), np.int32), "clip"),
    lambda: tf.horizontal_flip(np.zeros((2, 4, 4, 3), np.float32), np.random.default_rng(0)),
    lambda: tf.horizontal_flip(np.zeros((4, 4, 3), np.uint8), np.random.default_rng(0)),
    lambda: tf.random_resized_crop(np.zeros((4, 4, 3), np.uint8), np.random.default_rng(0), 4),
    lambda: tf.random_resized_crop(np.zeros((2, 8, 8, 3), np.uint8), np.random.default_rng(0), 4,
                                   scale=(0.5, 0.1)),
    lambda: tf.random_resized_crop(np.zeros((2, 8, 8, 3), np.uint8), np.random.default_rng(0), 4, ratio=(0, 1)),
    lambda: tf.random_resized_crop(np.zeros((2, 8, 8, 3), np.uint8), np.random.default_rng(0), 0),
    lambda: tf.random_resized_crop(np.zeros((2, 8, 8, 3), np.uint8), np.random.default_rng(0), 4,
                                   interpolation="nearest"),
    lambda: tf.multi_scale_crop(np.zeros((2, 8, 8, 3), np.uint8), np.random.default_rng(0), 4, scales=(1, 1.5)),
    lambda: tf.multi_scale_crop(np.zeros((2, 8, 8, 1), np.uint8), np.random.default_rng(0), 4),
    lambda: tf.center_crop(np.zeros((2, 8, 10, 3), np.uint8), 9),
    lambda: tf.three_crop(np.zeros((2, 8, 10, 3), np.uint8), 9),
    lambda: tf.resize_short(np.zeros((2, 8, 10, 3), np.uint8), -1),
    lambda: tf.rand_augment(np.zeros((2, 8, 10, 3), np.float64), np.random.default_rng(0)),
    lambda: tf.rand_augment(np.zeros((2, 8, 10, 3), np.uint8), np.random.default_rng(0), magnitude_std=-1),
    lambda: tf.rand_augment(np.zeros((2, 8, 10, 3), np.uint8), np.random.default_rng(0), interpolation="x"),
])
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()
