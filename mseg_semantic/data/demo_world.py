"""A small, seeded, SYNTHETIC multi-dataset world in MSeg's on-disk format (the demo's and the tests' data).

No real dataset can be downloaded here, so this draws procedural street scenes (sky, buildings, road with lane
markings, zebra crossings and curbs, sidewalk, grass, trees, fences, guard rails, poles with signs, cars, people,
bicycles and motorcycles, some ridden). Every object class has its own colour family and texture, the same in
every dataset, so a universal class looks the same everywhere. Each dataset labels a scene only in its own
taxonomy, as the real ones do, with the granularity conflicts that make MSeg's datasets disagree (the ones MSeg's
relabeling records fix):

- cityscapes-19: curbs are 'sidewalk', lane markings and crossings 'road'; bicyclists AND motorcyclists are
  'rider' (MSeg's one-hot target: bicyclist); guard rails are unlabeled (Cityscapes' 19 classes leave them out).
- ade20k-150: trees are 'tree', grass 'grass', motorcycles 'minibike'; a traffic sign is a 'signboard', which
  MSeg's universal taxonomy leaves unlabeled; riders are 'person'; guard rails are 'fence'.
- mapillary-public65: its finer classes: 'Curb', 'Lane Marking - General', 'Lane Marking - Crosswalk',
  'Traffic Sign (Front)', 'Bicyclist', 'Motorcyclist', 'Guard Rail'.
- the `-relabeled` versions of the three (the same images): the fine truth in each relabeled taxonomy, which is
  what MSeg's relabeling produced (bicyclist / motorcyclist / guard_rail wherever the taxonomy has them).
- camvid-11 (held out, val/test only): 'Tree', 'Column_Pole', 'SignSymbol', 'Pedestrian', 'Bicyclist' (the
  rider and the bicycle); no class for grass, guard rails or motorcycles (CamVid's MotorcycleScooter is
  unlabeled in MSeg's camvid-11, and its Fence receives only MSeg's `fence`), which are 255.

Training through the universal taxonomy merges these into one label space, which is what lets one model serve
camvid-11 zero-shot. Datasets differ in image size and aspect, scene statistics and a slight colour cast.

Layout under ``out_dir`` (``data_root=out_dir`` works with the built-in dataset table unchanged):
``<the dataset's directory>/synthetic/{images,labels,labels_relabeled}/<split>/NNNNNN.{jpg,png}`` and
``dataset_lists/<name>/list/<split>.txt``; ``README.txt`` says SYNTHETIC; ``DEMO_WORLD.json`` marks a complete
world (generator version, seed, counts) so a second call with the same arguments does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mseg_semantic.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from mseg_semantic.distributed import DistInfo, barrier
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import Catalog, load_class_names

GENERATOR_VERSION = 3  # bump whenever the generated images or labels change
MARKER = "DEMO_WORLD.json"
DEMO_TRAIN_DATASETS = ("cityscapes-19", "ade20k-150", "mapillary-public65")
RELABELED_SUFFIX = "-relabeled"
# the same images as the training datasets, labelled with the fine truth in MSeg's relabeled taxonomies
DEMO_RELABELED_DATASETS = tuple(name + RELABELED_SUFFIX for name in DEMO_TRAIN_DATASETS)
DEMO_TEST_DATASETS = ("camvid-11",)

# The objects the generator draws (index = world id) and what each dataset calls them (None: unlabeled, 255).
# bicyclist / motorcyclist are the person riding (the vehicle under them is bicycle / motorcycle).
WORLD_CLASSES = ("sky", "building", "road", "lane_marking", "curb", "sidewalk", "terrain", "vegetation",
                 "fence", "pole", "traffic_sign", "car", "person", "bicycle",
                 "bicyclist", "motorcyclist", "motorcycle", "guard_rail", "crosswalk")
DATASET_CLASS_NAMES: dict[str, dict[str, str | None]] = {
    "cityscapes-19": {"sky": "sky", "building": "building", "road": "road", "lane_marking": "road", "curb": "sidewalk",
                      "sidewalk": "sidewalk", "terrain": "terrain", "vegetation": "vegetation", "fence": "fence",
                      "pole": "pole", "traffic_sign": "traffic sign", "car": "car", "person": "person", "bicycle": "bicycle",
                      "bicyclist": "rider", "motorcyclist": "rider", "motorcycle": "motorcycle", "guard_rail": None,
                      "crosswalk": "road"},
    "ade20k-150": {"sky": "sky", "building": "building", "road": "road", "lane_marking": "road", "curb": "sidewalk",
                   "sidewalk": "sidewalk", "terrain": "grass", "vegetation": "tree", "fence": "fence", "pole": "pole",
                   "traffic_sign": "signboard", "car": "car", "person": "person", "bicycle": "bicycle",
                   "bicyclist": "person", "motorcyclist": "person", "motorcycle": "minibike", "guard_rail": "fence",
                   "crosswalk": "road"},
    "mapillary-public65": {"sky": "Sky", "building": "Building", "road": "Road", "lane_marking": "Lane Marking - General",
                           "curb": "Curb", "sidewalk": "Sidewalk", "terrain": "Terrain", "vegetation": "Vegetation",
                           "fence": "Fence", "pole": "Pole", "traffic_sign": "Traffic Sign (Front)", "car": "Car",
                           "person": "Person", "bicycle": "Bicycle", "bicyclist": "Bicyclist", "motorcyclist": "Motorcyclist",
                           "motorcycle": "Motorcycle", "guard_rail": "Guard Rail", "crosswalk": "Lane Marking - Crosswalk"},
    "cityscapes-19-relabeled": {"sky": "sky", "building": "building", "road": "road", "lane_marking": "road",
                                "curb": "sidewalk_pavement", "sidewalk": "sidewalk_pavement", "terrain": "terrain",
                                "vegetation": "vegetation", "fence": "fence", "pole": "pole", "traffic_sign": "traffic_sign",
                                "car": "car", "person": "person", "bicycle": "bicycle", "bicyclist": "bicyclist",
                                "motorcyclist": "motorcyclist", "motorcycle": "motorcycle", "guard_rail": None,
                                "crosswalk": "road"},
    "ade20k-150-relabeled": {"sky": "sky", "building": "building", "road": "road", "lane_marking": "road",
                             "curb": "sidewalk_pavement", "sidewalk": "sidewalk_pavement", "terrain": "terrain",
                             "vegetation": "vegetation", "fence": "fence", "pole": "pole", "traffic_sign": None,
                             "car": "car", "person": "person", "bicycle": "bicycle", "bicyclist": "bicyclist",
                             "motorcyclist": "motorcyclist", "motorcycle": "motorcycle", "guard_rail": "guard_rail",
                             "crosswalk": "road"},
    "mapillary-public65-relabeled": {"sky": "sky", "building": "building", "road": "road", "lane_marking": "road",
                                     "curb": "sidewalk_pavement", "sidewalk": "sidewalk_pavement", "terrain": "terrain",
                                     "vegetation": "vegetation", "fence": "fence", "pole": "pole",
                                     "traffic_sign": "traffic_sign", "car": "car", "person": "person", "bicycle": "bicycle",
                                     "bicyclist": "bicyclist", "motorcyclist": "motorcyclist", "motorcycle": "motorcycle",
                                     "guard_rail": "guard_rail", "crosswalk": "road"},
    "camvid-11": {"sky": "Sky", "building": "Building", "road": "Road", "lane_marking": "Road", "curb": "Sidewalk",
                  "sidewalk": "Sidewalk", "terrain": None, "vegetation": "Tree", "fence": "Fence", "pole": "Column_Pole",
                  "traffic_sign": "SignSymbol", "car": "Car", "person": "Pedestrian", "bicycle": "Bicyclist",
                  "bicyclist": "Bicyclist", "motorcyclist": None, "motorcycle": None, "guard_rail": None, "crosswalk": "Road"},
}
_W = {name: i for i, name in enumerate(WORLD_CLASSES)}


@dataclass(frozen=True)
class Style:
    """How one dataset's scenes look: sizes (h, w), object counts (min, max), a colour cast."""

    sizes: tuple[tuple[int, int], ...]
    cars: tuple[int, int]
    people: tuple[int, int]
    bicycles: tuple[int, int]
    trees: tuple[int, int]
    poles: tuple[int, int]
    building_cover: float  # fraction of the skyline with buildings
    terrain_prob: float  # chance that grass lies beyond the sidewalks
    fence_prob: float
    cast: tuple[float, float, float]
    riders: tuple[int, int] = (0, 0)  # people riding a bicycle or a motorcycle on the road
    motorcycles: tuple[int, int] = (0, 0)  # parked beside the road
    guard_rail_prob: float = 0.0
    crossing_prob: float = 0.0


STYLES: dict[str, Style] = {
    "cityscapes-19": Style(((128, 256),), (2, 5), (1, 4), (0, 2), (1, 3), (1, 3), 0.9, 0.4, 0.4, (1.0, 1.0, 1.0),
                           (1, 3), (0, 1), 0.3, 0.4),
    "ade20k-150": Style(((160, 160), (144, 192), (192, 144)), (0, 2), (0, 3), (0, 1), (2, 5), (0, 2), 0.6, 0.8, 0.5, (1.04, 1.0, 0.95),
                        (1, 2), (0, 1), 0.35, 0.3),
    "mapillary-public65": Style(((144, 192), (108, 192)), (1, 4), (0, 3), (0, 2), (1, 4), (1, 3), 0.75, 0.6, 0.4, (0.96, 1.0, 1.04),
                                (1, 3), (0, 1), 0.35, 0.4),
    "camvid-11": Style(((144, 192),), (1, 4), (1, 3), (0, 2), (1, 3), (1, 2), 0.85, 0.4, 0.4, (1.03, 1.0, 0.97),
                       (1, 2), (0, 1), 0.3, 0.4),
}
DEFAULT_COUNTS = {"train": 60, "val": 20}
HELDOUT_COUNTS = {"val": 24, "test": 24}

# Colour families (RGB) and texture strength per world class: the same in every dataset.
_BUILDING_COLORS = ((182, 160, 128), (150, 150, 158), (160, 92, 72), (205, 192, 168), (128, 112, 100))
_CAR_COLORS = ((190, 30, 35), (30, 65, 170), (225, 225, 230), (235, 190, 40), (40, 140, 150))
_SHIRT_COLORS = ((220, 60, 160), (240, 140, 20), (60, 200, 220), (150, 60, 210), (230, 230, 80))
_JACKET_COLORS = ((40, 40, 44), (70, 36, 30), (34, 48, 70))  # motorcyclists: dark leather
_HELMET_COLORS = ((250, 250, 250), (250, 215, 0), (0, 190, 90))  # bicyclists: small bright helmets
_MOTORCYCLE_COLORS = ((150, 20, 25), (25, 25, 30), (20, 60, 140), (200, 200, 205))
_NOISE = np.zeros(256, np.float32)
for _name, _amp in {"sky": 2, "building": 6, "road": 7, "lane_marking": 3, "curb": 4, "sidewalk": 4, "terrain": 16,
                    "vegetation": 22, "fence": 6, "pole": 3, "traffic_sign": 2, "car": 3, "person": 4, "bicycle": 3,
                    "bicyclist": 4, "motorcyclist": 3, "motorcycle": 3, "guard_rail": 2, "crosswalk": 3}.items():
    _NOISE[_W[_name]] = _amp


@dataclass(frozen=True)
class DemoWorld:
    root: Path
    train_datasets: tuple[str, ...]
    test_datasets: tuple[str, ...]
    counts: dict  # dataset -> {split: images}
    generated: bool  # False when an identical complete world was already there


def _scaled(color, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in color)


class _Canvas:
    """Paints the image and the world-id label with the same geometry."""

    def __init__(self, h: int, w: int):
        self.image = np.zeros((h, w, 3), np.uint8)
        self.label = np.zeros((h, w), np.uint8)

    def poly(self, points, cls: str | None, color) -> None:
        pts = np.round(np.asarray(points, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(self.image, [pts], color)
        if cls is not None:
            cv2.fillPoly(self.label, [pts], _W[cls])

    def rect(self, x0, y0, x1, y1, cls: str | None, color) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, color)

    def circle(self, x, y, r, cls: str | None, color, thickness: int = -1) -> None:
        center, radius = (int(round(x)), int(round(y))), max(1, int(round(r)))
        cv2.circle(self.image, center, radius, color, thickness)
        if cls is not None:
            cv2.circle(self.label, center, radius, _W[cls], thickness)

    def line(self, p, q, cls: str | None, color, thickness: int) -> None:
        p, q = tuple(int(round(v)) for v in p), tuple(int(round(v)) for v in q)
        cv2.line(self.image, p, q, color, max(1, thickness))
        if cls is not None:
            cv2.line(self.label, p, q, _W[cls], max(1, thickness))


def _paint_sky(c: _Canvas, h: int) -> None:
    """A vertical gradient."""
    top, bottom = np.array([105, 155, 225], np.float32), np.array([190, 212, 238], np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    c.image[:] = (top + (bottom - top) * t).astype(np.uint8)
    c.label[:] = _W["sky"]


def _paint_buildings(c: _Canvas, rng: np.random.Generator, w: int, h: int, horizon: float, style: Style) -> None:
    """Buildings along the skyline, windows on a grid."""
    x = rng.uniform(-0.1, 0.05) * w
    while x < w:
        bw = rng.uniform(0.12, 0.3) * w
        if rng.random() < style.building_cover:
            roof = horizon - rng.uniform(0.12, 0.42) * h
            color = _BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS))]
            c.rect(x, roof, x + bw, horizon + 2, "building", _scaled(color, rng.uniform(0.85, 1.1)))
            step = rng.uniform(6, 10)
            for wy in np.arange(roof + 3, horizon - 4, step):
                for wx in np.arange(x + 3, x + bw - 4, step):
                    c.rect(wx, wy, wx + step * 0.45, wy + step * 0.5, None, (58, 66, 88))
        x += bw


@dataclass(frozen=True)
class _Street:
    """The ground plane: where the road runs between the horizon and the bottom edge."""

    horizon: float
    ground: float  # pixels from the horizon to the bottom edge
    vanishing_x: float
    road_left: float  # road edges at the bottom edge
    road_right: float

    def road_span(self, y: float) -> tuple[float, float]:
        f = (y - self.horizon) / self.ground
        return self.vanishing_x + (self.road_left - self.vanishing_x) * f, self.vanishing_x + (self.road_right - self.vanishing_x) * f


def _paint_ground(c: _Canvas, rng: np.random.Generator, w: int, h: int, horizon: float, style: Style) -> _Street:
    """Grass or pavement beyond the sidewalks, sidewalks, curbs, the road and its dashed centre line."""
    street = _Street(horizon, h - horizon, w * rng.uniform(0.35, 0.65), w * rng.uniform(-0.25, 0.2), w * rng.uniform(0.8, 1.25))
    vx, road_l, road_r, ground = street.vanishing_x, street.road_left, street.road_right, street.ground
    walk = w * rng.uniform(0.15, 0.35)
    has_terrain = rng.random() < style.terrain_prob
    c.rect(0, horizon, w, h, "terrain" if has_terrain else "sidewalk", (118, 150, 62) if has_terrain else (166, 156, 146))
    c.poly([(vx - 6, horizon), (vx + 6, horizon), (road_r + walk, h), (road_l - walk, h)], "sidewalk", (166, 156, 146))
    for k in range(1, 6):  # paving joints
        y = horizon + ground * (k / 6) ** 1.6
        c.line((0, y), (w, y), None, (135, 128, 122), 1)
    c.poly([(vx - 3, horizon), (vx + 3, horizon), (road_r + 3, h), (road_l - 3, h)], "curb", (200, 200, 194))
    c.poly([(vx - 2, horizon), (vx + 2, horizon), (road_r, h), (road_l, h)], "road", (80, 80, 86))
    for k in range(7):  # dashed centre line, wider towards the camera
        a, b = (k + 0.3) / 7, (k + 0.7) / 7
        ya, yb = horizon + ground * a ** 1.5, horizon + ground * b ** 1.5
        xa = vx + ((road_l + road_r) / 2 - vx) * a ** 1.5
        xb = vx + ((road_l + road_r) / 2 - vx) * b ** 1.5
        c.line((xa, ya), (xb, yb), "lane_marking", (232, 232, 220), int(1 + 4 * b ** 1.5))
    if rng.random() < style.crossing_prob:
        _paint_crossing(c, rng, street)
    if rng.random() < style.guard_rail_prob:
        _paint_guard_rail(c, rng, street)
    return street


def _paint_crossing(c: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """A zebra crossing: white bars across the road, in perspective (Mapillary's 'Lane Marking - Crosswalk')."""
    near = rng.uniform(0.3, 0.75)
    y0, y1 = street.horizon + street.ground * near, street.horizon + street.ground * near * 1.18
    (l0, r0), (l1, r1) = street.road_span(y0), street.road_span(y1)
    bars = int(rng.integers(6, 10))
    for k in range(bars):
        a, b = (k + 0.2) / bars, (k + 0.7) / bars
        c.poly([(l0 + (r0 - l0) * a, y0), (l0 + (r0 - l0) * b, y0), (l1 + (r1 - l1) * b, y1), (l1 + (r1 - l1) * a, y1)],
               "crosswalk", (238, 238, 232))


def _paint_guard_rail(c: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """A metal guard rail along one road edge, a band with posts, rising towards the camera."""
    side = 0 if rng.random() < 0.5 else 1
    f0, f1 = sorted(rng.uniform(0.15, 1.0, 2))
    f1 = max(f1, f0 + 0.25)
    ys = [street.horizon + street.ground * f for f in np.linspace(f0, f1, 6)]
    xs = [street.road_span(y)[side] + (-1 if side == 0 else 1) * 0.05 * (y - street.horizon) for y in ys]
    heights = [0.16 * (y - street.horizon) for y in ys]
    top = [(x, y - h) for x, y, h in zip(xs, ys, heights)]
    band = [(x, y - 0.4 * h) for x, y, h in zip(xs, ys, heights)]
    c.poly(top + band[::-1], "guard_rail", (188, 192, 198))
    for x, y, h in zip(xs, ys, heights):
        c.line((x, y - h), (x, y), "guard_rail", (120, 124, 130), max(1, int(0.12 * h)))


def _paint_car(c: _Canvas, rng: np.random.Generator, base: float, s: float, left: float, right: float) -> None:
    cw, ch = 0.42 * s, 0.24 * s
    cx = rng.uniform(left + cw / 2, max(left + cw / 2 + 1, right - cw / 2))
    body = _scaled(_CAR_COLORS[rng.integers(len(_CAR_COLORS))], rng.uniform(0.85, 1.1))
    c.rect(cx - cw / 2, base - ch * 0.6, cx + cw / 2, base - ch * 0.1, "car", body)
    c.rect(cx - cw * 0.32, base - ch, cx + cw * 0.32, base - ch * 0.55, "car", body)
    c.rect(cx - cw * 0.27, base - ch * 0.93, cx + cw * 0.27, base - ch * 0.62, None, (52, 62, 78))
    for wx in (cx - cw * 0.3, cx + cw * 0.3):
        c.circle(wx, base - ch * 0.12, ch * 0.14, "car", (22, 22, 22))


def _paint_person(c: _Canvas, rng: np.random.Generator, px: float, base: float, s: float) -> None:
    ph = 0.38 * s
    c.rect(px - ph * 0.09, base - ph * 0.45, px + ph * 0.09, base, "person", (42, 44, 92))
    c.rect(px - ph * 0.12, base - ph * 0.82, px + ph * 0.12, base - ph * 0.43, "person", _SHIRT_COLORS[rng.integers(len(_SHIRT_COLORS))])
    c.circle(px, base - ph * 0.9, ph * 0.09, "person", (226, 182, 150))


def _paint_bicycle(c: _Canvas, rng: np.random.Generator, px: float, base: float, s: float) -> None:
    r = 0.07 * s
    frame = (210, 120, 10) if rng.random() < 0.5 else (10, 120, 210)
    thick = max(1, int(r * 0.3))
    for wx in (px - r * 1.3, px + r * 1.3):
        c.circle(wx, base - r, r, "bicycle", (25, 25, 25), thick)
    c.line((px - r * 1.3, base - r), (px, base - r * 2.2), "bicycle", frame, thick)
    c.line((px, base - r * 2.2), (px + r * 1.3, base - r), "bicycle", frame, thick)
    c.line((px - r * 0.2, base - r), (px + r * 0.6, base - r * 2.3), "bicycle", frame, thick)


def _paint_motorcycle(c: _Canvas, rng: np.random.Generator, px: float, base: float, s: float) -> None:
    """Heavier than a bicycle: solid dark wheels, a coloured tank and seat, a grey engine."""
    r = 0.08 * s
    body = _MOTORCYCLE_COLORS[rng.integers(len(_MOTORCYCLE_COLORS))]
    for wx in (px - r * 1.5, px + r * 1.5):
        c.circle(wx, base - r, r, "motorcycle", (20, 20, 20))
        c.circle(wx, base - r, r * 0.4, "motorcycle", (150, 150, 155))
    c.rect(px - r * 0.7, base - r * 1.6, px + r * 0.5, base - r * 0.8, "motorcycle", (110, 110, 115))  # engine
    c.poly([(px - r * 1.5, base - r * 1.7), (px + r * 1.2, base - r * 2.2), (px + r * 1.3, base - r * 1.5),
            (px - r * 1.4, base - r * 1.3)], "motorcycle", body)
    c.line((px + r * 1.2, base - r * 2.1), (px + r * 1.5, base - r * 1.0), "motorcycle", (60, 60, 64), max(1, int(r * 0.3)))


def _paint_rider(c: _Canvas, rng: np.random.Generator, px: float, base: float, s: float, kind: str) -> None:
    """A person riding: a bicyclist (bright shirt, small bright helmet, leaning forward over a bicycle) or a
    motorcyclist (dark jacket, full dark helmet, upright on a motorcycle). Labelled as the rider's world class;
    the vehicle under them keeps its own class."""
    r = 0.07 * s
    if kind == "bicyclist":
        _paint_bicycle(c, rng, px, base, s)
        shirt = _SHIRT_COLORS[rng.integers(len(_SHIRT_COLORS))]
        hip, shoulder, head = (px - r * 0.2, base - r * 2.5), (px + r * 0.6, base - r * 4.0), (px + r * 0.8, base - r * 4.6)
        helmet = _HELMET_COLORS[rng.integers(len(_HELMET_COLORS))]
    else:
        _paint_motorcycle(c, rng, px, base, s)
        shirt = _JACKET_COLORS[rng.integers(len(_JACKET_COLORS))]
        hip, shoulder, head = (px - r * 0.4, base - r * 2.4), (px - r * 0.2, base - r * 4.1), (px - r * 0.1, base - r * 4.7)
        helmet = (30, 30, 34)
    thick = max(1, int(r * 0.55))
    c.line(hip, (px + r * 0.1, base - r * 1.1), kind, (42, 44, 92), thick)  # leg to the pedal / footpeg
    c.line(hip, shoulder, kind, shirt, max(1, int(r * 0.9)))  # torso
    c.line(shoulder, (px + r * 1.1, base - r * 2.6), kind, shirt, thick)  # arm to the handlebar
    c.circle(head[0], head[1], r * 0.45, kind, (226, 182, 150) if kind == "bicyclist" else helmet)
    c.circle(head[0], head[1] - r * 0.2, r * 0.38, kind, helmet)


def _paint_pole(c: _Canvas, rng: np.random.Generator, px: float, base: float, s: float) -> None:
    """A pole with a round or square traffic sign on top."""
    ph, pw = 0.75 * s, max(1.0, 0.02 * s)
    c.rect(px - pw, base - ph, px + pw, base, "pole", (52, 56, 66))
    r = max(2.0, 0.05 * s)
    if rng.random() < 0.5:
        c.circle(px, base - ph, r, "traffic_sign", (205, 30, 30))
        c.circle(px, base - ph, r * 0.62, "traffic_sign", (242, 242, 242))
    else:
        c.rect(px - r, base - ph - r, px + r, base - ph + r, "traffic_sign", (30, 64, 185))
        c.rect(px - r * 0.5, base - ph - r * 0.15, px + r * 0.5, base - ph + r * 0.15, "traffic_sign", (242, 242, 242))


def _paint_tree(c: _Canvas, rng: np.random.Generator, px: float, base: float, s: float) -> None:
    """A trunk and a clustered canopy."""
    th = 0.5 * s
    c.rect(px - 0.02 * s, base - th, px + 0.02 * s, base, "vegetation", (92, 64, 40))
    for _ in range(5):
        c.circle(px + rng.normal(0, 0.08 * s), base - th - rng.normal(0.05, 0.07) * s, rng.uniform(0.09, 0.16) * s,
                 "vegetation", _scaled((48, 104, 42), rng.uniform(0.8, 1.2)))


def _paint_fence(c: _Canvas, rng: np.random.Generator, w: int, base: float, s: float) -> None:
    """A fence across the width at the far side of the sidewalk."""
    fh = 0.12 * s
    x0, x1 = sorted(rng.uniform(0, w, 2))
    x0, x1 = min(x0, w * 0.4), max(x1, w * 0.6)
    c.rect(x0, base - fh, x1, base, "fence", (144, 104, 62))
    for sx in np.arange(x0, x1, max(3.0, fh * 0.4)):
        c.line((sx, base - fh), (sx, base), None, (104, 74, 44), 1)


_ROADSIDE_PAINTERS = {"person": _paint_person, "bicycle": _paint_bicycle, "pole": _paint_pole, "tree": _paint_tree,
                      "motorcycle": _paint_motorcycle}


def _paint_objects(c: _Canvas, rng: np.random.Generator, w: int, h: int, street: _Street, style: Style) -> None:
    """Cars and riders on the road; people, bicycles, motorcycles, poles and trees beside it; maybe a fence:
    painted far to near."""
    objects = []  # (base y, kind)
    for kind, (lo, hi) in (("car", style.cars), ("person", style.people), ("bicycle", style.bicycles),
                           ("tree", style.trees), ("pole", style.poles), ("rider", style.riders),
                           ("motorcycle", style.motorcycles)):
        for _ in range(rng.integers(lo, hi + 1)):
            objects.append((street.horizon + street.ground * rng.uniform(0.2, 1.0) ** 0.9, kind))
    if rng.random() < style.fence_prob:
        objects.append((street.horizon + street.ground * rng.uniform(0.05, 0.3), "fence"))
    for base, kind in sorted(objects):
        s = (base - street.horizon) / street.ground * h  # pixels per metre, roughly
        left, right = street.road_span(base)
        if kind == "car":
            _paint_car(c, rng, base, s, left, right)
        elif kind == "rider":  # in the outer quarter of the road, where bicycles and motorcycles keep
            px = left + (right - left) * (rng.uniform(0.08, 0.25) if rng.random() < 0.5 else rng.uniform(0.75, 0.92))
            _paint_rider(c, rng, px, base, s, "bicyclist" if rng.random() < 0.55 else "motorcyclist")
        elif kind == "fence":
            _paint_fence(c, rng, w, base, s)
        else:
            side = rng.choice([-1, 1])
            px = (left - rng.uniform(0.03, 0.2) * s) if side < 0 else (right + rng.uniform(0.03, 0.2) * s)
            _ROADSIDE_PAINTERS[kind](c, rng, px, base, s)


def _textured(c: _Canvas, rng: np.random.Generator, h: int, w: int, style: Style) -> np.ndarray:
    """Class-dependent texture: speckle noise whose strength is set by the class, plus blotches on plants."""
    noise = rng.normal(0.0, 1.0, (h, w)).astype(np.float32)
    blotch = cv2.GaussianBlur(rng.normal(0.0, 3.0, (h, w)).astype(np.float32), (0, 0), 1.5)
    amplitude = _NOISE[c.label]
    plants = (c.label == _W["vegetation"]) | (c.label == _W["terrain"])
    texture = noise * amplitude + np.where(plants, blotch * amplitude * 0.6, 0.0)
    image = c.image.astype(np.float32) + texture[:, :, None]
    image *= np.asarray(style.cast, np.float32) * rng.uniform(0.9, 1.1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _render_scene(rng: np.random.Generator, h: int, w: int, style: Style) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (H x W x 3 uint8 RGB, H x W uint8 world ids)."""
    c = _Canvas(h, w)
    horizon = h * rng.uniform(0.36, 0.52)
    _paint_sky(c, h)
    _paint_buildings(c, rng, w, h, horizon, style)
    street = _paint_ground(c, rng, w, h, horizon, style)
    _paint_objects(c, rng, w, h, street, style)
    return _textured(c, rng, h, w, style), c.label


def world_dataset(dataset: str) -> str:
    """The dataset whose scenes a (relabeled) dataset shows: ``cityscapes-19-relabeled`` -> ``cityscapes-19``."""
    return dataset[: -len(RELABELED_SUFFIX)] if dataset in DEMO_RELABELED_DATASETS else dataset


def dataset_label_table(dataset: str) -> np.ndarray:
    """world id -> the dataset's label id (255 where its taxonomy has no class), via the taxonomy's names."""
    names = load_class_names(dataset)
    table = np.full(256, 255, np.uint8)
    for world_id, world_name in enumerate(WORLD_CLASSES):
        class_name = DATASET_CLASS_NAMES[dataset][world_name]
        if class_name is not None:
            if class_name not in names:
                raise ValueError(f"demo world: taxonomy {dataset} has no class {class_name!r} (for {world_name})")
            table[world_id] = names.index(class_name)
    return table


def render_world(dataset: str, seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (RGB uint8) of ``dataset``'s scenes and its world ids (the fine truth); a function of its arguments
    only (a relabeled dataset shows the same scenes as its dataset)."""
    dataset = world_dataset(dataset)
    key = [seed, sorted(STYLES).index(dataset), ("train", "val", "test").index(split), index]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    style = STYLES[dataset]
    h, w = style.sizes[rng.integers(len(style.sizes))]
    return _render_scene(rng, h, w, style)


def render_sample(dataset: str, seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (RGB uint8) and its label in ``dataset``'s taxonomy; a function of its arguments only."""
    image, world = render_world(dataset, seed, split, index)
    return image, dataset_label_table(dataset)[world]


def _encode(ext: str, array: np.ndarray, params=()) -> bytes:
    ok, buffer = cv2.imencode(ext, array, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return buffer.tobytes()


_README = """SYNTHETIC DATA - NOT A REAL DATASET

Every image here was drawn by mseg_semantic.data.demo_world (procedural street scenes, seed {seed}).
The directory and class names follow MSeg's datasets (Cityscapes, ADE20K, Mapillary Vistas, CamVid) only so
that the real code paths run unchanged; no image comes from, or resembles the content of, those datasets.
Numbers measured on this data say nothing about real-world accuracy.
"""


def generate(
    out_dir: str | os.PathLike,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    heldout_counts: dict[str, int] | None = None,
    force: bool = False,
) -> DemoWorld:
    """Write the synthetic world under ``out_dir`` (see the module docstring); idempotent unless ``force``.

    ``counts``: images per split of each training dataset (default train 60, val 20); ``heldout_counts``:
    of camvid-11 (default val 24, test 24). The relabeled versions of the training datasets share their images and
    splits. Takes a few seconds and ~7 MB.
    """
    root = Path(out_dir)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    heldout_counts = dict(HELDOUT_COUNTS if heldout_counts is None else heldout_counts)
    plan = {name: counts for name in DEMO_TRAIN_DATASETS} | {name: heldout_counts for name in DEMO_TEST_DATASETS}
    for name, splits in plan.items():
        for split, n in splits.items():
            if split not in ("train", "val", "test") or not isinstance(n, int) or n < 1:
                raise UserError(f"demo world: {name} split {split!r} with {n!r} images; splits are train/val/test with >= 1 image")
    marker = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "counts": plan}
    marker_path = root / MARKER
    if not force and marker_path.is_file():
        try:
            if json.loads(marker_path.read_text()) == marker:
                return DemoWorld(root, DEMO_TRAIN_DATASETS, DEMO_TEST_DATASETS, plan, generated=False)
        except (OSError, ValueError):
            pass  # unreadable marker: regenerate
    root.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(data_root=root)
    if marker_path.exists():
        marker_path.unlink()  # the world is incomplete until the new marker is written
    for name, splits in plan.items():
        dataset_dir = catalog.locate(name, "train").root
        shutil.rmtree(dataset_dir / "synthetic", ignore_errors=True)  # only what this generator wrote
        # a training dataset's images also carry its relabeled version's labels (the fine truth)
        versions = {name: "labels"} | ({name + RELABELED_SUFFIX: "labels_relabeled"} if name in DEMO_TRAIN_DATASETS else {})
        tables = {version: dataset_label_table(version) for version in versions}
        for split, n in splits.items():
            lines: dict[str, list[str]] = {version: [] for version in versions}
            for index in range(n):
                image, world = render_world(name, seed, split, index)
                rgb_rel = f"synthetic/images/{split}/{index:06d}.jpg"
                atomic_write_bytes(dataset_dir / rgb_rel, _encode(".jpg", image[:, :, ::-1], (cv2.IMWRITE_JPEG_QUALITY, 92)))
                for version, folder in versions.items():
                    label_rel = f"synthetic/{folder}/{split}/{index:06d}.png"
                    atomic_write_bytes(dataset_dir / label_rel, _encode(".png", tables[version][world]))
                    lines[version].append(f"{rgb_rel} {label_rel}\n")
            for version in versions:
                atomic_write_text(catalog.locate(version, split).list_file, "".join(lines[version]))
    atomic_write_text(root / "README.txt", _README.format(seed=seed))
    atomic_write_json(marker_path, marker, indent=1)
    return DemoWorld(root, DEMO_TRAIN_DATASETS, DEMO_TEST_DATASETS, plan, generated=True)


def write_if_asked(data: Any, info: DistInfo = DistInfo()) -> DemoWorld | None:
    """``DATA.generate_demo_world``: write the world to ``DATA.data_root`` unless it is complete there already (rank 0
    writes, the other ranks wait for it)."""
    if not data.generate_demo_world:
        return None
    if not data.data_root:
        raise UserError("DATA.generate_demo_world=True needs DATA.data_root (where to write the demo world)")
    world = generate(data.data_root) if info.is_main else None
    barrier(info)
    return world
