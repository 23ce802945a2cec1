"""Clip augmentation on the host: uint8 RGB clips (T, H, W, 3) in numpy, uint8 out.

Every random decision (crop box, flip, RandAugment ops, magnitudes and signs) is drawn
once per clip from the `np.random.Generator` argument and applied to all frames, as
the official video pipelines do: a per-frame draw would turn a static scene into
jitter and break the motion the model is meant to learn from. Resizing and the
RandAugment ops go through PIL frame by frame, so results match the PIL-based
references (TSN, timm, SlowFast) rather than a re-implementation of their filters.
"""
import math
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from data.normalization import NORMALIZATION

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}



def _check_clip(clip) -> None:
    if not isinstance(clip, np.ndarray) or clip.dtype != np.uint8:
        raise ValueError(f"clip must be a uint8 numpy array, got {type(clip).__name__} "
                         f"of dtype {getattr(clip, 'dtype', None)}")
    if clip.ndim != 4 or clip.shape[-1] != 3 or 0 in clip.shape:
        raise ValueError(f"clip must have shape (T, H, W, 3) with no empty axis, got {clip.shape}")


def _check_size(size) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")


def _check_range(name: str, bounds) -> tuple[float, float]:
    lo, hi = bounds
    if not 0 < lo <= hi:
        raise ValueError(f"{name} must satisfy 0 < low <= high, got {bounds}")
    return float(lo), float(hi)


def _resample(interpolation: str) -> int:
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {interpolation!r}")
    return _RESAMPLE[interpolation]


def _per_frame(clip: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(frame))) for frame in clip])


def _resize(clip: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    resample = _resample(interpolation)
    if clip.shape[1:3] == (height, width):
        return clip
    return _per_frame(clip, lambda img: img.resize((width, height), resample))


# --- crops -------------------------------------------------------------------


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style crop, as torchvision's RandomResizedCrop.

    Up to 10 tries of an area fraction U(scale) and a log-uniform aspect ratio w/h;
    the first box that fits wins, else a central crop with the ratio clamped to the
    range. VideoMAE/UMT fine-tuning use scale (0.08, 1.0), ratio (3/4, 4/3).
    """
    lo_scale, hi_scale = _check_range("scale", scale)
    lo_ratio, hi_ratio = _check_range("ratio", ratio)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    area = height * width
    log_ratio = (math.log(lo_ratio), math.log(hi_ratio))
    for _ in range(10):
        target_area = area * rng.uniform(lo_scale, hi_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < lo_ratio:
        w, h = width, int(round(width / lo_ratio))
    elif in_ratio > hi_ratio:
        w, h = int(round(height * hi_ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(clip: np.ndarray, rng: np.random.Generator, size: int,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        interpolation: str = "bilinear") -> np.ndarray:
    """One RandomResizedCrop box for the whole clip, resized to (size, size)."""
    _check_clip(clip)
    _check_size(size)
    _resample(interpolation)
    top, left, h, w = random_resized_crop_params(clip.shape[1], clip.shape[2], rng, scale, ratio)
    return _resize(clip[:, top:top + h, left:left + w], size, size, interpolation)


def _fixed_offsets(width: int, height: int, crop_w: int, crop_h: int,
                   more_fix_crop: bool) -> list[tuple[int, int]]:
    """TSN's fill_fix_offset: (x, y) of the corners and centre, plus 8 more positions."""
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    steps = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more_fix_crop:
        steps += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * w_step, j * h_step) for i, j in steps]


def multi_scale_crop_params(height: int, width: int, rng: np.random.Generator, size: int,
                            scales=(1, .875, .75, .66), max_distort: int = 1, fix_crop: bool = True,
                            more_fix_crop: bool = True) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a TSN GroupMultiScaleCrop box.

    Side candidates are int(min(H, W) * s) for s in scales, snapped to `size` when
    within 3 pixels; (h, w) is a uniform pick among pairs whose scale indices differ
    by at most max_distort. A side snapped above the image is clamped to it (TSN's
    PIL crop would pad it with black instead).
    """
    _check_size(size)
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence in (0, 1], got {scales}")
    if max_distort < 0:
        raise ValueError(f"max_distort must be >= 0, got {max_distort}")
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    if min(sides) <= 0:
        raise ValueError(f"scales {scales} give an empty crop of a {height}x{width} image")
    crop_h = [min(size if abs(x - size) < 3 else x, height) for x in sides]
    crop_w = [min(size if abs(x - size) < 3 else x, width) for x in sides]
    pairs = [(h, w) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w)
             if abs(i - j) <= max_distort]
    h, w = pairs[rng.integers(len(pairs))]
    if fix_crop:
        offsets = _fixed_offsets(width, height, w, h, more_fix_crop)
        left, top = offsets[rng.integers(len(offsets))]
    else:
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
    return top, left, h, w


def multi_scale_crop(clip: np.ndarray, rng: np.random.Generator, size: int,
                     scales=(1, .875, .75, .66), max_distort: int = 1, fix_crop: bool = True,
                     more_fix_crop: bool = True, interpolation: str = "bilinear") -> np.ndarray:
    """TSN multi-scale corner crop resized to (size, size).

    VideoMAE and UMT pre-training use it as GroupMultiScaleCrop(224, [1, .875, .75, .66])
    with the defaults here (max_distort 1, 13 fixed offsets, bilinear).
    """
    _check_clip(clip)
    _resample(interpolation)
    top, left, h, w = multi_scale_crop_params(clip.shape[1], clip.shape[2], rng, size, scales,
                                              max_distort, fix_crop, more_fix_crop)
    return _resize(clip[:, top:top + h, left:left + w], size, size, interpolation)


def horizontal_flip(clip: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror every frame with probability p (one coin for the clip)."""
    _check_clip(clip)
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return np.ascontiguousarray(clip[:, :, ::-1]) if rng.random() < p else clip


def resize_short(clip: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Shorter side to `size`, aspect kept; the longer side is int(size * long / short).

    Truncation (not rounding) matches torchvision's Resize(int), VideoMAE's
    video_transforms.Resize and SlowFast's short-side scaling.
    """
    _check_clip(clip)
    _check_size(size)
    height, width = clip.shape[1:3]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    return _resize(clip, new_h, new_w, interpolation)


def _check_fits(clip: np.ndarray, size: int) -> None:
    _check_clip(clip)
    _check_size(size)
    if size > min(clip.shape[1:3]):
        raise ValueError(f"crop size {size} exceeds the clip's {clip.shape[1]}x{clip.shape[2]} frames")


def center_crop(clip: np.ndarray, size: int) -> np.ndarray:
    """Central (size, size) crop with torchvision's offsets, int(round((H - size) / 2))."""
    _check_fits(clip, size)
    height, width = clip.shape[1:3]
    top, left = int(round((height - size) / 2)), int(round((width - size) / 2))
    return clip[:, top:top + size, left:left + size]


def three_crop(clip: np.ndarray, size: int) -> np.ndarray:
    """(3, T, size, size, 3): SlowFast's uniform_crop for spatial_idx 0, 1, 2.

    Start, centre and end along the longer side (the width of a square frame), centred
    along the shorter one; centre offsets are ceil((L - size) / 2) as in SlowFast and
    UniFormerV2's 3-crop test. VideoMAE/UMT put the middle crop at int((L - size) / 2),
    one pixel earlier when the margin is odd.
    """
    _check_fits(clip, size)
    height, width = clip.shape[1:3]
    top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if height > width:
        boxes = [(y, left) for y in (0, top, height - size)]
    else:
        boxes = [(top, x) for x in (0, left, width - size)]
    return np.stack([clip[:, y:y + size, x:x + size] for y, x in boxes])


# --- RandAugment ---------------------------------------------------------------
# timm's RandAugment as UniFormerV2 configures it ("rand-m7-n4-mstd0.5-inc1" with
# bicubic resampling) through SlowFast's video variant: num_ops ops picked uniformly
# WITH replacement, each applied with probability 0.5 at a magnitude N(m, mstd)
# clipped to [0, 10]; the level is a fraction of _MAX_LEVEL and signed ops take a
# random sign. Geometric ops fill uncovered pixels with _FILL.

_MAX_LEVEL = 10.0
_FILL = (128, 128, 128)


def _rotate(img, degrees, resample):
    return img.rotate(degrees, resample=resample, fillcolor=_FILL)


def _affine(matrix):
    def apply(img, arg, resample):
        return img.transform(img.size, Image.AFFINE, matrix(img, arg), resample=resample, fillcolor=_FILL)
    return apply


def _enhance(enhancer):
    def apply(img, factor, _resample):
        return enhancer(img).enhance(factor)
    return apply


def _plain(op):
    def apply(img, _arg, _resample):
        return op(img)
    return apply


def _posterize(img, bits, _resample):
    # A LUT rather than ImageOps.posterize: current Pillow rejects the 0 bits that
    # PosterizeIncreasing reaches at level >= 7.5, where older Pillow returned black.
    keep = 0xFF & ~(2 ** (8 - bits) - 1)
    return img.point([i & keep for i in range(256)] * 3)


def _solarize(img, threshold, _resample):
    return ImageOps.solarize(img, threshold)


def _solarize_add(img, add, _resample):
    return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)


def _frac(level: float) -> float:
    return level / _MAX_LEVEL


def _signed(scale: float):
    return lambda level, sign: sign * _frac(level) * scale


def _enhance_level(level, _sign):
    return _frac(level) * 1.8 + 0.1


def _enhance_increasing_level(level, sign):
    return max(0.1, 1.0 + sign * _frac(level) * 0.9)


class RandOp(NamedTuple):
    """level_to_arg(level in [0, 10], sign +-1) -> argument, None for ops without one;
    apply(PIL image, argument, resample) -> PIL image."""
    level_to_arg: Callable[[float, int], float] | None
    apply: Callable


# Every op of both timm lists; comments give the argument over levels 0..10. Affine
# matrices map output to input coordinates: translating by +p moves content left/up.
RAND_AUGMENT_OPS = {
    "AutoContrast": RandOp(None, _plain(ImageOps.autocontrast)),
    "Equalize": RandOp(None, _plain(ImageOps.equalize)),
    "Invert": RandOp(None, _plain(ImageOps.invert)),
    "Rotate": RandOp(_signed(30.0), _rotate),                                         # +-[0, 30] degrees
    "Posterize": RandOp(lambda level, _: int(_frac(level) * 4), _posterize),          # keep 0 -> 4 bits
    "PosterizeIncreasing": RandOp(lambda level, _: 4 - int(_frac(level) * 4), _posterize),  # 4 -> 0 bits
    "Solarize": RandOp(lambda level, _: int(_frac(level) * 256), _solarize),          # threshold 0 -> 256
    "SolarizeIncreasing": RandOp(lambda level, _: 256 - int(_frac(level) * 256), _solarize),  # 256 -> 0
    "SolarizeAdd": RandOp(lambda level, _: int(_frac(level) * 110), _solarize_add),   # +[0, 110] below 128
    "Color": RandOp(_enhance_level, _enhance(ImageEnhance.Color)),                    # [0.1, 1.9]
    "ColorIncreasing": RandOp(_enhance_increasing_level, _enhance(ImageEnhance.Color)),  # 1 +- [0, 0.9]
    "Contrast": RandOp(_enhance_level, _enhance(ImageEnhance.Contrast)),
    "ContrastIncreasing": RandOp(_enhance_increasing_level, _enhance(ImageEnhance.Contrast)),
    "Brightness": RandOp(_enhance_level, _enhance(ImageEnhance.Brightness)),
    "BrightnessIncreasing": RandOp(_enhance_increasing_level, _enhance(ImageEnhance.Brightness)),
    "Sharpness": RandOp(_enhance_level, _enhance(ImageEnhance.Sharpness)),
    "SharpnessIncreasing": RandOp(_enhance_increasing_level, _enhance(ImageEnhance.Sharpness)),
    "ShearX": RandOp(_signed(0.3), _affine(lambda img, f: (1, f, 0, 0, 1, 0))),       # +-[0, 0.3]
    "ShearY": RandOp(_signed(0.3), _affine(lambda img, f: (1, 0, 0, f, 1, 0))),       # +-[0, 0.3]
    "TranslateXRel": RandOp(_signed(0.45), _affine(lambda img, p: (1, 0, p * img.size[0], 0, 1, 0))),  # +-45% W
    "TranslateYRel": RandOp(_signed(0.45), _affine(lambda img, p: (1, 0, 0, 0, 1, p * img.size[1]))),  # +-45% H
}

# timm's _RAND_TRANSFORMS: posterize, solarize and the enhancers weaken as the level grows.
RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
# timm's _RAND_INCREASING_TRANSFORMS ("inc1"): every op gets stronger as the level grows.
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)


def rand_augment_params(rng: np.random.Generator, num_ops: int = 4, magnitude: float = 7,
                        magnitude_std: float = 0.5, increasing: bool = True) -> list[tuple[str, float | None]]:
    """The (op name, argument) list one clip gets; skipped ops are left out."""
    if num_ops < 0:
        raise ValueError(f"num_ops must be >= 0, got {num_ops}")
    if not 0 <= magnitude_std < math.inf:
        raise ValueError(f"magnitude_std must be finite and >= 0, got {magnitude_std}")
    names = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
    chosen = []
    for index in rng.integers(len(names), size=num_ops):
        if rng.random() > 0.5:
            continue
        level = rng.normal(magnitude, magnitude_std) if magnitude_std > 0 else magnitude
        level = min(_MAX_LEVEL, max(0.0, float(level)))
        sign = -1 if rng.random() > 0.5 else 1
        name = names[index]
        level_to_arg = RAND_AUGMENT_OPS[name].level_to_arg
        chosen.append((name, None if level_to_arg is None else level_to_arg(level, sign)))
    return chosen


def rand_augment(clip: np.ndarray, rng: np.random.Generator, num_ops: int = 4, magnitude: float = 7,
                 magnitude_std: float = 0.5, increasing: bool = True,
                 interpolation: str = "bicubic") -> np.ndarray:
    """RandAugment with one op list, magnitudes and signs for all frames of the clip.

    Defaults are UniFormerV2's "rand-m7-n4-mstd0.5-inc1" with bicubic resampling.
    """
    _check_clip(clip)
    resample = _resample(interpolation)
    for name, arg in rand_augment_params(rng, num_ops, magnitude, magnitude_std, increasing):
        apply = RAND_AUGMENT_OPS[name].apply
        clip = _per_frame(clip, lambda img: apply(img, arg, resample))
    return clip


# --- normalisation -------------------------------------------------------------


def normalize(clip: np.ndarray, preset: str) -> np.ndarray:
    """float32 (x - mean) / std per channel; uint8 input is scaled to [0, 1] first."""
    if preset not in NORMALIZATION:
        raise ValueError(f"unknown normalisation preset {preset!r}; valid: {sorted(NORMALIZATION)}")
    clip = np.asarray(clip)
    if clip.ndim < 1 or clip.shape[-1] != 3:
        raise ValueError(f"last axis must hold 3 channels, got shape {clip.shape}")
    if clip.dtype == np.uint8:
        clip = clip.astype(np.float32) / 255.0
    elif not np.issubdtype(clip.dtype, np.floating):
        raise ValueError(f"clip must be uint8 or float in [0, 1], got {clip.dtype}")
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[preset])
    return ((clip - mean) / std).astype(np.float32)
