"""The names the pipeline's named options take, each list defined once. The modules that implement the
options import them (the losses, the schedules, the network profiles), and params.yaml is checked against
them without importing torch (the data stages never load it)."""

from __future__ import annotations

# network profiles (pipeline.networks.factory.PROFILES holds their sizes)
PUBLISHED, DEMO = "published", "demo"
PROFILE_NAMES = (PUBLISHED, DEMO)
# logit distillation of the HDKD loss (pipeline.distill.losses)
KD_TYPES = ("soft", "hard", "none")
# how soft KD's summed KL divergence is divided: "published" by batch * classes (the published code's,
# DeiT's legacy normalisation), "batchmean" by the batch only (``classes`` times larger)
KD_REDUCTIONS = ("published", "batchmean")
# learning-rate schedules of the bundles' --lr_schedule (pipeline.bundle.schedules)
LR_SCHEDULES = ("constant", "cosine")
# input channels the networks and the slice reader take (grey or RGB)
CHANNELS = (1, 3)
# augmentation recipes of model.augment: each changes train_transforms' published defaults
# (pipeline.data.transforms) by these keyword arguments; "published" changes nothing
AUGMENTATIONS: dict[str, dict[str, float]] = {
    "published": {},
    "light": {"rotate_degrees": 20.0, "sharpen_prob": 0.0, "blur_prob": 0.0},
    "none": {"rotate_prob": 0.0, "flip_prob": 0.0, "jitter_prob": 0.0, "sharpen_prob": 0.0, "blur_prob": 0.0},
}
