"""Per-channel mean/std presets of the official pipelines (RGB in [0, 1]); no image library needed."""

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "slowfast": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
}
