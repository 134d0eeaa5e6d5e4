"""MiniCity scene layout: a street seen by a pinhole camera, as a list of planar surfaces.

World coordinates in metres: X to the right, Y up from the road, Z forward. The camera sits at
height ``cam_h`` above the road at X = 0, looking along Z; a point projects to
u = vx + f X / Z, v = horizon + f (cam_h - Y) / Z. A scene is a straight street (2-4 lanes),
sidewalks, optional grass strips, building blocks on both sides, trees, poles with signs, parked
and driving cars and pedestrians, all at metric sizes, so their image sizes follow perspective.
Surfaces are drawn far to near (painter's algorithm); the style (minicity/render.py) decides
how each one looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Cityscapes label ids (the on-disk format of GTA5 and Cityscapes labels).
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = (
    7, 8, 11, 17, 20, 21, 22, 23, 24, 26,
)
EGO_VEHICLE = 1


@dataclass
class Camera:
    width: int
    height: int
    f: float  # focal length in pixels
    horizon: float  # image row of the horizon
    vx: float  # image column of the vanishing point
    cam_h: float = 1.6

    def project(self, x, y, z) -> np.ndarray:
        """World points -> (n, 2) pixel coordinates (u, v)."""
        x, y, z = np.broadcast_arrays(
            *(np.atleast_1d(np.asarray(a, np.float64)) for a in (x, y, z)))
        return np.stack([self.vx + self.f * x / z, self.horizon + self.f * (self.cam_h - y) / z], 1)


@dataclass
class Surface:
    """A planar polygon with a label and a material.

    ``plane`` tells how to recover metric coordinates of its pixels for texturing:
    ("ground",) the road plane; ("x", X0) a plane facing the street; ("z", Z0) a plane facing
    the camera.
    """

    poly: np.ndarray  # (n, 2) pixel coordinates
    label: int  # Cityscapes label id
    material: str
    depth: float  # for drawing order, larger first
    plane: tuple
    tint: np.ndarray = field(default_factory=lambda: np.ones(3))  # per-instance colour factor


def _box_x(cam: Camera, x0: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Polygon of the rectangle at X = x0 spanning Z in [z0, z1] and Y in [y0, y1]."""
    return cam.project([x0, x0, x0, x0], [y0, y1, y1, y0], [z0, z0, z1, z1])


def _box_z(cam: Camera, z0: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return cam.project([x0, x0, x1, x1], [y0, y1, y1, y0], [z0] * 4)


def _ground(cam: Camera, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    return cam.project([x0, x1, x1, x0], [0, 0, 0, 0], [z0, z0, z1, z1])


def _ellipse(cam: Camera, x: float, y: float, z: float, rx: float, ry: float) -> np.ndarray:
    c = cam.project(x, y, z)[0]
    axes = (max(1, int(cam.f * rx / z)), max(1, int(cam.f * ry / z)))
    return cv2.ellipse2Poly((int(c[0]), int(c[1])), axes, 0, 0, 360, 10).astype(np.float64)


def _tint(rng: np.random.Generator, spread: float) -> np.ndarray:
    return np.exp(rng.normal(0.0, spread, 3))


def sample_scene(rng: np.random.Generator, width: int, height: int) -> tuple[Camera, list[Surface]]:
    """A random street scene: the camera and its surfaces, far to near."""
    cam = Camera(width, height, f=width * rng.uniform(0.75, 0.95),
                 horizon=height * rng.uniform(0.40, 0.50), vx=width * rng.uniform(0.42, 0.58),
                 cam_h=rng.uniform(1.4, 1.8))
    zn, zf = 0.5, 250.0
    lanes = int(rng.integers(2, 5))
    lane_w = rng.uniform(3.0, 3.8)
    left = -lane_w * rng.uniform(0.5, lanes - 0.5)
    right = left + lanes * lane_w
    s: list[Surface] = []
    s.append(Surface(_ground(cam, left, right, zn, zf), ROAD, "road", zf, ("ground",)))
    for side, edge in ((-1, left), (1, right)):
        sw = rng.uniform(2.0, 4.5)
        outer = edge + side * sw
        s.append(Surface(_ground(cam, edge, outer, zn, zf), SIDEWALK, "sidewalk", zf, ("ground",)))
        # grass beyond the sidewalk: a strip in front of the buildings (half the time) and
        # whatever ground shows through gaps between them
        grass = rng.uniform(1.0, 4.0) if rng.random() < 0.5 else 0.0
        s.append(Surface(_ground(cam, outer, outer + side * 200, zn, zf), TERRAIN, "terrain", zf,
                         ("ground",)))
        outer += side * grass
        s += _buildings(rng, cam, side, outer, zf)
        s += _street_furniture(rng, cam, side, edge, outer, zf)
    s += _cars(rng, cam, left, right, lane_w)
    s += _people(rng, cam, left, right)
    s.sort(key=lambda surf: -surf.depth)
    return cam, s


def _buildings(rng, cam: Camera, side: int, x_face: float, zf: float) -> list[Surface]:
    out = []
    z = rng.uniform(0.5, 8.0)
    while z < 160:
        length, h = rng.uniform(8, 35), rng.uniform(6, 28)
        if rng.random() < 0.15:  # a gap with a hedge or a tree line behind
            out.append(Surface(_box_x(cam, x_face + side * 2, z, z + length, 0, rng.uniform(2, 6)),
                               VEGETATION, "foliage", z + length, ("x", x_face + side * 2),
                               _tint(rng, 0.12)))
        else:
            setback = x_face + side * rng.uniform(0, 2.5)
            tint = _tint(rng, 0.25)
            out.append(Surface(_box_x(cam, setback, z, z + length, 0, h), BUILDING, "facade",
                               z + length, ("x", setback), tint))
            out.append(Surface(_box_z(cam, z, setback, setback + side * 20, 0, h), BUILDING,
                               "front", z + 0.01, ("z", z), tint * 0.8))
        z += length + (rng.uniform(0, 6) if rng.random() < 0.3 else 0)
    # buildings closing the street far away
    out.append(Surface(_box_z(cam, zf * 0.8, -200, 200, 0, rng.uniform(10, 40)), BUILDING, "front",
                       zf * 0.8, ("z", zf * 0.8), _tint(rng, 0.2)))
    return out


def _street_furniture(rng, cam: Camera, side: int, curb: float, outer: float,
                      zf: float) -> list[Surface]:
    out = []
    for z in np.cumsum(rng.uniform(6, 25, size=12)) + rng.uniform(1, 6):
        if z > 120:
            break
        if rng.random() < 0.35:  # tree: trunk and crown are both vegetation
            x = outer - side * rng.uniform(0.5, 1.5)
            r, top = rng.uniform(1.2, 3.0), rng.uniform(4, 9)
            out.append(Surface(_box_z(cam, z, x - 0.15, x + 0.15, 0, top - r), VEGETATION, "trunk",
                               z, ("z", z)))
            out.append(Surface(_ellipse(cam, x, top, z, r, r * rng.uniform(0.8, 1.3)), VEGETATION,
                               "foliage", z - 0.01, ("z", z), _tint(rng, 0.15)))
        else:  # pole, maybe with a sign
            x, top = curb + side * rng.uniform(0.3, 0.8), rng.uniform(3.5, 8)
            # 1.1 m wide, not a real pole's 0.2 m: at MiniCity's output stride 8 a pole must
            # cover feature cells to be learnable at all (MiniCity v2, docs/METHOD.md section 9)
            box = _box_z(cam, z, x - 0.55, x + 0.55, 0, top)
            out.append(Surface(box, POLE, "pole", z, ("z", z)))
            if rng.random() < 0.6:
                y, w = rng.uniform(2.0, 3.0), rng.uniform(1.6, 2.6)
                box = _box_z(cam, z - 0.05, x - w / 2, x + w / 2, y, y + w * 0.8)
                out.append(Surface(box, SIGN, "sign", z - 0.05, ("z", z), _tint(rng, 0.2)))
    return out


def _cars(rng, cam: Camera, left: float, right: float, lane_w: float) -> list[Surface]:
    out = []
    for _ in range(int(rng.integers(1, 8))):
        lane = rng.integers(0, round((right - left) / lane_w))
        x = left + (lane + 0.5) * lane_w + rng.uniform(-0.4, 0.4)
        z, w = rng.uniform(5, 70), rng.uniform(1.7, 2.0)
        length, h = rng.uniform(4, 5), rng.uniform(1.4, 1.7)
        tint = _tint(rng, 0.6)
        side_x = x - w / 2 if x > 0 else x + w / 2  # the side the camera sees
        out.append(Surface(_box_x(cam, side_x, z, z + length, 0.25, h * 0.6), CAR, "car_body",
                           z + length / 2, ("x", side_x), tint * 0.85))
        out.append(Surface(_box_z(cam, z, x - w / 2, x + w / 2, 0.25, h * 0.6), CAR, "car_body",
                           z, ("z", z), tint))
        cabin = cam.project([x - w * 0.45, x - w * 0.38, x + w * 0.38, x + w * 0.45],
                            [h * 0.6, h, h, h * 0.6], [z + 0.6] * 4)
        out.append(Surface(cabin, CAR, "car_window", z + 0.3, ("z", z + 0.6)))
        for wx in (x - w * 0.35, x + w * 0.35):
            out.append(Surface(_box_z(cam, z + 0.02, wx - 0.15, wx + 0.15, 0, 0.3), CAR, "wheel",
                               z - 0.02, ("z", z)))
    return out


def _people(rng, cam: Camera, left: float, right: float) -> list[Surface]:
    out = []
    # v2: 2-8 people, no farther than 20 m, so that person covers feature cells too
    for _ in range(int(rng.integers(2, 9))):
        side = rng.choice([-1, 1])
        x = (left if side < 0 else right) + side * rng.uniform(0.5, 3.0)
        if rng.random() < 0.15:  # crossing the street
            x = rng.uniform(left, right)
        z, h = rng.uniform(3, 20), rng.uniform(1.55, 1.95)
        cloth = _tint(rng, 0.5)
        out.append(Surface(_box_z(cam, z, x - 0.2, x - 0.03, 0, h * 0.48), PERSON, "cloth", z,
                           ("z", z), cloth * 0.7))
        out.append(Surface(_box_z(cam, z, x + 0.03, x + 0.2, 0, h * 0.48), PERSON, "cloth", z,
                           ("z", z), cloth * 0.7))
        out.append(Surface(_box_z(cam, z, x - 0.24, x + 0.24, h * 0.46, h * 0.85), PERSON, "cloth",
                           z - 0.01, ("z", z), cloth))
        out.append(Surface(_ellipse(cam, x, h * 0.92, z, 0.11, 0.13), PERSON, "skin", z - 0.01,
                           ("z", z)))
    return out


def rasterize(cam: Camera, surfaces: list[Surface]) -> np.ndarray:
    """(H, W) int32 map of the index of the surface that wins each pixel; -1 where none (sky)."""
    idx = np.full((cam.height, cam.width), -1, dtype=np.int32)
    for i, surf in enumerate(surfaces):
        poly = np.clip(surf.poly, -1e5, 1e5) * 16  # 4 bits of sub-pixel precision
        cv2.fillPoly(idx, [np.round(poly).astype(np.int32)], i, lineType=cv2.LINE_8, shift=4)
    return idx
