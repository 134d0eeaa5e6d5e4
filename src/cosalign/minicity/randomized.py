"""The pretraining set: MiniCity's street layouts under randomized appearance, labelled by material.

It plays ImageNet's part for the embedded benchmark (docs/METHOD.md section 9): a large, diverse
set that teaches a backbone features that separate things, without ever showing it what the
target domains look like. Each image gets a :class:`~cosalign.minicity.styles.Style` of its
own: every material's colour drawn at random, procedural noise textures (never the photographs
the "photo" target is textured with), random shading, exposure, colour cast, saturation, clouds,
blur and noise, and no fog, no dusk exposure and no ego-vehicle hood. The labels are the
14 materials below rather than the benchmark's classes, so only the backbone carries over, as
with an ImageNet classifier.
"""

from __future__ import annotations

import numpy as np

from cosalign.minicity.pool import render_pool
from cosalign.minicity.render import render
from cosalign.minicity.scene import rasterize, sample_scene
from cosalign.minicity.styles import PALETTES, Style

MATERIALS = ("sky", "road", "sidewalk", "terrain", "wall", "trunk", "foliage", "pole", "sign",
             "car_body", "car_window", "wheel", "cloth", "skin")
# scene material -> label (facades and the far front are one "wall")
MATERIAL_ID = {**{m: i for i, m in enumerate(MATERIALS)}, "facade": 4, "front": 4}
# the least bright exposure drawn, above the "dusk" target's 0.55
MIN_EXPOSURE = 0.75


def random_style(rng: np.random.Generator) -> Style:
    """A random appearance: random colours for every material, noise textures, lighting."""
    palette = tuple((name, tuple(int(c) for c in rng.integers(20, 236, 3)))
                    for name in sorted(PALETTES["game"]))
    return Style(palette=palette, texture=float(rng.uniform(0, 1)), texture_set="noise",
                 shading=float(rng.uniform(0, 0.4)), clouds=float(rng.uniform(0, 1)),
                 exposure=float(rng.uniform(MIN_EXPOSURE, 1.25)),
                 gamma=float(rng.uniform(0.8, 1.25)),
                 cast=tuple(float(c) for c in rng.uniform(0.85, 1.15, 3)),
                 saturation=float(rng.uniform(0.5, 1.3)), blur=float(rng.uniform(0, 1)),
                 noise=float(rng.uniform(0, 6)))


def render_one(job: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(seed, index, width, height) -> (H, W, 3) uint8 RGB image, (H, W) uint8 material ids."""
    seed, i, width, height = job
    rng = np.random.default_rng([seed, 3, i])  # MiniCity uses streams 0-2 of each seed
    cam, surfaces = sample_scene(rng, width, height)
    image, _ = render(cam, surfaces, random_style(rng), rng)
    material = np.array([MATERIAL_ID[s.material] for s in surfaces] + [MATERIAL_ID["sky"]],
                        np.uint8)
    return image, material[rasterize(cam, surfaces)]  # index -1 (nothing drawn) is the sky


def render_set(n: int, size: tuple[int, int], seed: int = 0, workers: int = 2,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``size`` (width, height): (n, H, W, 3) uint8 and (n, H, W) uint8."""
    jobs = [(seed, i, *size) for i in range(n)]
    images = np.empty((n, size[1], size[0], 3), np.uint8)
    labels = np.empty((n, size[1], size[0]), np.uint8)
    for i, pair in enumerate(render_pool(render_one, jobs, workers, "pretraining set", progress)):
        images[i], labels[i] = pair
    return images, labels
