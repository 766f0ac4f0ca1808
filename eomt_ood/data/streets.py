"""Procedural street scenes with Cityscapes labels, and a writer for a Cityscapes-layout synthetic dataset.

A pinhole camera at height 1 (all lengths are in camera heights, ~1.5 m) looks down a straight street. A ground
point at lateral offset X and depth z projects to x = x_v + f X / z, y = y_h + f / z, so every ground pixel below
the horizon has X = (x - x_v) / (y - y_h) and z = f / (y - y_h); a façade plane X = X_f seen in column x has depth
z = f X_f / (x - x_v) and height h = 1 - (y - y_h) z / f. Everything is drawn with a depth buffer, so occlusion
follows from geometry: road, sidewalks, optional terrain strips and fences, building blocks with windows (gaps
show trees and sky), trees, cars on the road, people on the sidewalks, poles with traffic signs and lights, and
an ego-vehicle bonnet at the bottom (labelId 1 "ego vehicle", ignored in evaluation). Colours vary per scene and
per object, with fine and blotchy noise on top, but every class keeps a distinctive look so that a small model can
learn it.

`render_scene(rng, height, width)` -> (rgb uint8 (H, W, 3), trainIds uint8 (H, W)); `render_scene_layers` returns
the whole `Scene` (labelIds, instance ids, depth) for renderers that need more (fog, pasted objects).
`write_dataset(out, num_images, ...)` writes `out/leftImg8bit/<split>/<city>/..._leftImg8bit.png` and
`out/gtFine/<split>/<city>/..._gtFine_labelIds.png` / `_gtFine_labelTrainIds.png` (and `_gtFine_color.png`).
The same seed gives the same scenes and byte-identical files; image k of a split does not depend on num_images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from eomt_ood.data.labels import LABEL_ID_COLORS, LABEL_TO_TRAIN
from eomt_ood.data.png import write_png
from eomt_ood.errors import UserError
from eomt_ood.io import check_output

# Cityscapes labelIds used by the generator
UNLABELED, EGO_VEHICLE = 0, 1
ROAD, SIDEWALK, BUILDING, FENCE, POLE = 7, 8, 11, 13, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 19, 20, 21, 22, 23, 24, 26

SPLIT_CITIES = {"train": ("gridham", "polyburg", "texelton"), "val": ("renderdorf",), "test": ("voxelheim",)}


@dataclass
class Scene:
    """One rendered street scene; every array is (H, W) unless stated."""

    rgb: np.ndarray  # (H, W, 3) uint8
    label_ids: np.ndarray  # uint8 Cityscapes labelIds
    instance_ids: np.ndarray  # int32, 0 = stuff, otherwise one id per object (car, person, tree, pole, ...)
    depth: (
        np.ndarray
    )  # float32 depth along the view axis in camera heights; inf for sky, 0 for the ego vehicle
    horizon: float  # image row of the horizon
    vanishing_x: float  # image column of the vanishing point
    focal: float  # focal length in pixels

    @property
    def train_ids(self) -> np.ndarray:
        """uint8 trainIds (255 = ignore)."""
        return LABEL_TO_TRAIN[self.label_ids]


class _Canvas:
    """Depth-buffered painter: a paint call only changes pixels nearer than what is already there."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.label = np.zeros((height, width), np.uint8)
        self.colour = np.zeros((height, width, 3), np.float32)
        self.depth = np.full((height, width), np.inf, np.float32)
        self.instance = np.zeros((height, width), np.int32)
        self.texture = np.zeros((height, width), np.float32)  # noise amplitude per pixel
        self.next_instance = 1

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def paint(self, mask, label, colour, depth, texture, instance=0, box=None) -> None:
        """Paint `mask` (bool, full image or the `box` = (y0, y1, x0, x1) region) where `depth` is not farther.

        `colour` is (3,) or broadcastable to (h, w, 3); `depth` and `instance` scalars or broadcastable to (h, w).
        Ties go to the later call, so details painted after their surface at the same depth (lane markings,
        windows) show. `np.copyto(..., where=)` writes in place without gathering the selected pixels.
        """
        if box is None:
            region: tuple[slice, slice] = (slice(None), slice(None))
        else:
            y0, y1, x0, x1 = (int(np.floor(v)) for v in box)
            y0, x0 = max(y0, 0), max(x0, 0)
            y1, x1 = min(y1, self.height), min(x1, self.width)
            if y0 >= y1 or x0 >= x1:
                return
            region = (slice(y0, y1), slice(x0, x1))
        current = self.depth[region]
        depth = np.asarray(depth, np.float32)
        paint = np.logical_and(mask, depth <= current)
        if not paint.any():
            return
        np.copyto(self.label[region], label, where=paint)
        np.copyto(current, depth, where=paint)
        np.copyto(self.instance[region], np.asarray(instance, np.int32), where=paint)
        np.copyto(self.texture[region], np.float32(texture), where=paint)
        np.copyto(self.colour[region], np.asarray(colour, np.float32), where=paint[..., None])


def _jitter(rng: np.random.Generator, base, spread: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3), 0, 255)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Blotchy noise, about unit variance, with features of `cell` pixels (bilinear upsampling of a coarse grid)."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2), dtype=np.float32)
    fine = ndimage.zoom(coarse, cell, order=1, prefilter=False)
    return fine[:height, :width] * 1.6


def _grid(box, height, width):
    """Pixel-centre coordinates (ys (h,1), xs (1,w)) of a clipped box."""
    y0, y1, x0, x1 = (int(np.floor(v)) for v in box)
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    ys = np.arange(y0, max(y1, y0), dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, max(x1, x0), dtype=np.float32)[None, :] + 0.5
    return ys, xs


class _Street:
    """Scene parameters and the projection helpers for one scene."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, simple: bool = False):
        self.rng, self.height, self.width, self.simple = rng, height, width, simple
        self.far_object = 9.0 if simple else 45.0  # the farthest tree / car (camera heights)
        self.horizon = height * rng.uniform(0.36, 0.48)
        self.vx = width * rng.uniform(0.42, 0.58)
        self.focal = width * rng.uniform(0.5, 0.65)
        self.road = (-rng.uniform(2.2, 3.6), rng.uniform(1.6, 2.8))  # lateral road edges (left < 0 < right)
        self.sidewalk = (rng.uniform(1.0, 2.2), rng.uniform(1.0, 2.2))  # widths left / right
        if simple:  # wide sidewalks stay several mask cells wide at low resolution
            self.sidewalk = (self.sidewalk[0] + 1.0, self.sidewalk[1] + 1.0)
        self.terrain = tuple(rng.uniform(0.6, 2.0) if rng.random() < 0.45 else 0.0 for _ in range(2))
        if simple:
            self.terrain = (0.0, 0.0)
        outer_left = self.road[0] - self.sidewalk[0]
        outer_right = self.road[1] + self.sidewalk[1]
        self.sidewalk_outer = (outer_left, outer_right)
        self.facade = (outer_left - self.terrain[0], outer_right + self.terrain[1])
        # columns [0, split_column) have their pixel centre left of the vanishing point (x + 0.5 < vx)
        self.split_column = int(np.clip(np.ceil(self.vx - 0.5), 0, width))

    def project(self, lateral: float, height_above_ground: float, depth: float) -> tuple[float, float]:
        return self.vx + self.focal * lateral / depth, self.horizon + self.focal * (
            1 - height_above_ground
        ) / depth

    def scale(self, size: float, depth: float) -> float:
        return self.focal * size / depth


def render_scene_layers(
    rng: np.random.Generator, height: int = 256, width: int = 512, simple: bool = False
) -> Scene:
    """Render one random street scene (see the module docstring); all randomness comes from `rng`.

    `simple=True` draws only six classes (road, sidewalk, building, vegetation, sky, car) plus the ignored
    bonnet, with few, near and therefore large trees and cars and no gaps between buildings: a task that a
    model with few queries and coarse masks (the tiny test models) can fit at low resolution.
    """
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16 x 16, got {height} x {width}")
    street = _Street(rng, height, width, simple)
    canvas = _Canvas(height, width)
    _draw_sky(canvas, street)
    _draw_ground(canvas, street)
    for side in (0, 1):
        _draw_facades(canvas, street, side)
        if not simple and rng.random() < 0.35:
            _draw_fence(canvas, street, side)
    for _ in range(rng.integers(1, 4) if simple else rng.integers(2, 9)):
        _draw_tree(canvas, street)
    for _ in range(rng.integers(1, 4) if simple else rng.integers(1, 7)):
        _draw_car(canvas, street)
    if not simple:
        for _ in range(rng.integers(1, 7)):
            _draw_person(canvas, street)
        for _ in range(rng.integers(1, 5)):
            _draw_pole(canvas, street)
    if rng.random() < 0.8:
        _draw_ego_vehicle(canvas, street)

    noise = 0.55 * rng.standard_normal((height, width), dtype=np.float32)
    noise += 0.8 * _smooth_noise(rng, height, width, cell=max(4, width // 64))
    light = rng.uniform(0.85, 1.12)
    rgb = canvas.colour * light + (canvas.texture * noise)[..., None]
    return Scene(
        rgb=np.clip(np.round(rgb), 0, 255).astype(np.uint8),
        label_ids=canvas.label,
        instance_ids=canvas.instance,
        depth=canvas.depth,
        horizon=street.horizon,
        vanishing_x=street.vx,
        focal=street.focal,
    )


def render_scene(
    rng: np.random.Generator, height: int = 256, width: int = 512, simple: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One random street scene: (rgb uint8 (H, W, 3), trainIds uint8 (H, W), 255 = ignore); see
    `render_scene_layers` for `simple`."""
    scene = render_scene_layers(rng, height, width, simple)
    return scene.rgb, scene.train_ids


# ------------------------------------------------------------------------------------------------ stuff


def _draw_sky(canvas: _Canvas, st: _Street) -> None:
    rng = st.rng
    top = np.array([rng.uniform(50, 100), rng.uniform(110, 150), rng.uniform(185, 235)], np.float32)
    bottom = np.array([rng.uniform(175, 215), rng.uniform(195, 225), rng.uniform(215, 240)], np.float32)
    t = np.clip(np.arange(canvas.height, dtype=np.float32) / max(st.horizon, 1.0), 0, 1)[:, None, None]
    colour = top * (1 - t) + bottom * t
    sky = np.ones((canvas.height, canvas.width), bool)
    canvas.paint(sky, SKY, colour, np.inf, texture=3.0)


def _draw_ground(canvas: _Canvas, st: _Street) -> None:
    rng = st.rng
    first_row = int(np.floor(st.horizon + 0.5))  # rows whose centre lies below the horizon
    box = (first_row, canvas.height, 0, canvas.width)
    ys, xs = _grid(box, canvas.height, canvas.width)
    below = ys - st.horizon
    lateral = (xs - st.vx) / below  # (h, w) lateral offset X of the ground point
    depth = np.broadcast_to(st.focal / below, lateral.shape)

    road = (lateral >= st.road[0]) & (lateral <= st.road[1])
    canvas.paint(road, ROAD, _jitter(rng, [85, 80, 90], 12), depth, texture=6.0, box=box)
    # dashed lane markings (still road, as in Cityscapes)
    lane_x = st.road[0] + (st.road[1] - st.road[0]) * rng.uniform(0.4, 0.6)
    marking = road & (np.abs(lateral - lane_x) < 0.06) & (np.mod(depth / 3.0, 1.0) < 0.5)
    canvas.paint(marking, ROAD, [215, 215, 210], depth, texture=6.0, box=box)

    side_colour = _jitter(rng, [175, 150, 165], 12)
    terrain_colour = _jitter(rng, [140, 170, 90], 15)
    joints = (np.mod(depth / 0.7, 1.0) < 0.08) | (np.mod(lateral / 0.7, 1.0) < 0.08)
    for side in (0, 1):
        # each side lies in its own half of the columns (X < 0 exactly left of the vanishing point)
        cols = slice(0, st.split_column) if side == 0 else slice(st.split_column, canvas.width)
        half = (first_row, canvas.height, cols.start, cols.stop)
        lat, dep = lateral[:, cols], depth[:, cols]
        inner, outer = st.road[side], st.sidewalk_outer[side]
        walk = (lat >= min(inner, outer)) & (lat <= max(inner, outer))
        canvas.paint(walk, SIDEWALK, side_colour, dep, texture=6.0, box=half)
        # paving joints and a kerb: the texture of a sidewalk
        canvas.paint(walk & joints[:, cols], SIDEWALK, side_colour * 0.82, dep, texture=6.0, box=half)
        kerb = walk & (np.abs(lat - inner) < 0.1)
        canvas.paint(kerb, SIDEWALK, side_colour * 0.7 + 60, dep, texture=6.0, box=half)
        # a grass strip up to the façade line, and more grass beyond it (seen through gaps between buildings)
        beyond = (lat <= outer) if side == 0 else (lat >= outer)
        if st.simple:  # no terrain class: the sidewalk runs on behind the buildings
            canvas.paint(beyond, SIDEWALK, side_colour, dep, texture=6.0, box=half)
        else:
            canvas.paint(beyond, TERRAIN, terrain_colour, dep, texture=14.0, box=half)


def _facade_coordinates(st: _Street, plane_lateral: float):
    """For the vertical plane X = plane_lateral, over the half `box` of columns on its side: depth (1, w) (0 where
    the plane is not seen), height (H, w) above ground, the columns (1, w) in which it is seen, and the box."""
    if plane_lateral < 0:
        box = (0, st.height, 0, st.split_column)
    else:
        box = (0, st.height, st.split_column, st.width)
    ys, xs = _grid(box, st.height, st.width)
    dx = xs - st.vx
    columns = (dx * np.sign(plane_lateral)) > 0.5
    depth = np.where(columns, st.focal * plane_lateral / np.where(columns, dx, 1.0), 0.0).astype(np.float32)
    height = 1.0 - (ys - st.horizon) * depth / st.focal
    return depth, height, columns, box


def _draw_facades(canvas: _Canvas, st: _Street, side: int) -> None:
    rng = st.rng
    depth, height, columns, box = _facade_coordinates(st, st.facade[side])
    # blocks along the street: [start, end) in depth, each with a height and a colour; some are gaps
    edges = [rng.uniform(0.5, 3.0)]
    while edges[-1] < 90:
        edges.append(edges[-1] + rng.uniform(4.0, 16.0))
    n_blocks = len(edges) - 1
    palette = np.array([[150, 120, 100], [120, 110, 105], [170, 160, 140], [140, 85, 70], [105, 105, 115]])
    colours = np.stack([_jitter(rng, palette[rng.integers(len(palette))], 18) for _ in range(n_blocks)])
    heights = rng.uniform(2.5, 11.0, n_blocks).astype(np.float32)
    present = (rng.random(n_blocks) < 0.85) | st.simple
    pitches = rng.uniform(0.9, 1.4, n_blocks).astype(np.float32)
    block = np.searchsorted(np.asarray(edges, np.float32), depth, side="right") - 1  # (1, W)
    valid = columns & (block >= 0) & (block < n_blocks)
    block = np.clip(block, 0, n_blocks - 1)
    valid &= present[block]
    top = heights[block]
    facade = valid & (height >= 0) & (height <= top)
    if not facade.any():
        return
    instances = canvas.next_instance + block
    canvas.next_instance += n_blocks
    colour = colours[block]  # (1, W, 3)
    canvas.paint(facade, BUILDING, colour, depth, texture=8.0, instance=instances, box=box)
    pitch = pitches[block]
    phase = np.mod(height / pitch, 1.0)
    windows = facade & (np.mod(depth / pitch, 1.0) < 0.5) & (phase > 0.3) & (phase < 0.75)
    windows &= (height > 0.9) & (height < top - 0.4)
    dark = colour * 0.35 + np.array([15, 25, 40], np.float32)
    canvas.paint(windows, BUILDING, dark, depth, texture=8.0, instance=instances, box=box)


def _draw_fence(canvas: _Canvas, st: _Street, side: int) -> None:
    rng = st.rng
    plane = st.sidewalk_outer[side] + (-0.05 if side == 0 else 0.05)
    depth, height, columns, box = _facade_coordinates(st, plane)
    start = rng.uniform(2.0, 15.0)
    end = start + rng.uniform(8.0, 40.0)
    top = rng.uniform(0.5, 0.8)
    within = columns & (depth >= start) & (depth <= end) & (height >= 0) & (height <= top)
    # posts every 1.5, thin bars every 0.35 and two rails; see-through elsewhere
    bars = (np.mod(depth / 0.35, 1.0) < 0.3) | (np.mod(depth / 1.5, 1.0) < 0.08)
    rails = (np.abs(height - top) < 0.05) | (np.abs(height - 0.15) < 0.04)
    fence = within & (bars | rails)
    colour = _jitter(rng, [150, 130, 110], 20)
    canvas.paint(fence, FENCE, colour, depth, texture=6.0, instance=canvas.new_instance(), box=box)


# ------------------------------------------------------------------------------------------------ things


def _ellipse(ys, xs, cy, cx, ry, rx):
    return ((ys - cy) / max(ry, 1e-3)) ** 2 + ((xs - cx) / max(rx, 1e-3)) ** 2 <= 1.0


def _draw_tree(canvas: _Canvas, st: _Street) -> None:
    rng = st.rng
    side = int(rng.integers(2))
    inward = 1.0 if side == 0 else -1.0  # towards the road
    crown_h, radius = rng.uniform(2.3, 4.0), rng.uniform(0.9, 1.9)
    # trunk between the façade and the kerb, crown clear of the façade (it would cut the crown otherwise)
    nearest = st.facade[side] + inward * (radius + 0.1)
    farthest = st.road[side] - inward * 0.3
    lateral = rng.uniform(min(nearest, farthest), max(nearest, farthest))
    if inward * (lateral - farthest) > 0:
        lateral = farthest
    depth = rng.uniform(3.0, st.far_object)
    cx, cy = st.project(lateral, crown_h, depth)
    r_px = st.scale(radius, depth)
    _, ground_y = st.project(lateral, 0.0, depth)
    box = (cy - 1.6 * r_px, ground_y + 1, cx - 1.6 * r_px, cx + 1.6 * r_px + 1)
    ys, xs = _grid(box, canvas.height, canvas.width)
    if ys.size == 0 or xs.size == 0:
        return
    crown = np.zeros((ys.shape[0], xs.shape[1]), bool)
    for _ in range(rng.integers(3, 7)):  # blobby: a few overlapping ellipses
        oy, ox = rng.uniform(-0.6, 0.6, 2) * r_px
        crown |= _ellipse(
            ys, xs, cy + oy, cx + ox, r_px * rng.uniform(0.5, 0.8), r_px * rng.uniform(0.5, 0.85)
        )
    trunk = (np.abs(xs - cx) <= max(st.scale(0.12, depth), 0.6)) & (ys >= cy) & (ys <= ground_y)
    green = _jitter(rng, [70, 115, 40], 20)
    colour = np.broadcast_to(green, (*crown.shape, 3)).copy()
    colour[trunk & ~crown] = _jitter(rng, [95, 70, 50], 10)
    canvas.paint(
        crown | trunk, VEGETATION, colour, depth, texture=22.0, instance=canvas.new_instance(), box=box
    )


def _draw_car(canvas: _Canvas, st: _Street) -> None:
    rng = st.rng
    width, height = rng.uniform(1.15, 1.35), rng.uniform(0.9, 1.15)
    lateral = rng.uniform(st.road[0] + width / 2 + 0.1, st.road[1] - width / 2 - 0.1)
    depth = rng.uniform(3.0, min(40.0, st.far_object))
    left, bottom = st.project(lateral - width / 2, 0.0, depth)
    right, top = st.project(lateral + width / 2, height, depth)
    box = (top, bottom + 1, left, right + 1)
    ys, xs = _grid(box, canvas.height, canvas.width)
    if ys.size == 0 or xs.size == 0:
        return
    unit = st.scale(1.0, depth)  # pixels per camera height at this depth
    h_of = (bottom - ys) / unit  # height above ground (h, 1)
    u_of = (xs - (left + right) / 2) / unit  # lateral offset from the car centre (1, w)
    body = (h_of >= 0.18) & (h_of <= 0.6 * height) & (np.abs(u_of) <= width / 2)
    cabin = (h_of > 0.6 * height) & (np.abs(u_of) <= width / 2 - 0.12 - 0.25 * (h_of - 0.6 * height))
    wheels = (h_of < 0.3) & (np.abs(np.abs(u_of) - 0.36 * width) < 0.13)
    silhouette = body | cabin | wheels
    paints = np.array(
        [[180, 30, 30], [30, 50, 150], [225, 225, 230], [40, 40, 45], [160, 165, 170], [30, 110, 60]]
    )
    paint = _jitter(rng, paints[rng.integers(len(paints))], 15)
    colour = np.broadcast_to(paint, (*silhouette.shape, 3)).copy()
    window = cabin & (h_of < height - 0.05) & (np.abs(u_of) <= width / 2 - 0.2 - 0.25 * (h_of - 0.6 * height))
    colour[window] = [45, 60, 80]
    colour[wheels & ~body] = [20, 20, 20]
    lights = body & (np.abs(np.abs(u_of) - (width / 2 - 0.12)) < 0.08) & (np.abs(h_of - 0.45 * height) < 0.05)
    colour[lights] = [230, 40, 30]
    canvas.paint(silhouette, CAR, colour, depth, texture=5.0, instance=canvas.new_instance(), box=box)


def _draw_person(canvas: _Canvas, st: _Street) -> None:
    rng = st.rng
    side = int(rng.integers(2))
    inner, outer = st.road[side], st.sidewalk_outer[side]
    lateral = rng.uniform(min(inner, outer) + 0.2, max(inner, outer) - 0.2)
    depth = rng.uniform(2.5, 30.0)
    tall = rng.uniform(1.0, 1.25)
    cx, ground_y = st.project(lateral, 0.0, depth)
    unit = st.scale(1.0, depth)
    box = (ground_y - tall * unit - 1, ground_y + 1, cx - 0.3 * unit, cx + 0.3 * unit + 1)
    ys, xs = _grid(box, canvas.height, canvas.width)
    if ys.size == 0 or xs.size == 0:
        return
    h_of, u_of = (ground_y - ys) / unit, (xs - cx) / unit
    legs = (h_of >= 0) & (h_of <= 0.48 * tall) & (np.abs(np.abs(u_of) - 0.055) < 0.045)
    torso = _ellipse(h_of, u_of, 0.68 * tall, 0.0, 0.22 * tall, 0.13)
    arms = (h_of > 0.45 * tall) & (h_of < 0.82 * tall) & (np.abs(np.abs(u_of) - 0.15) < 0.03)
    head = _ellipse(h_of, u_of, 0.93 * tall, 0.0, 0.075 * tall, 0.06)
    silhouette = legs | torso | arms | head
    colour = np.empty((*silhouette.shape, 3), np.float32)
    colour[:] = _jitter(rng, [rng.uniform(20, 200), rng.uniform(20, 120), rng.uniform(20, 200)], 10)
    colour[legs] = _jitter(rng, [50, 50, 80], 20)
    colour[head] = _jitter(rng, [205, 160, 130], 25)
    canvas.paint(silhouette, PERSON, colour, depth, texture=7.0, instance=canvas.new_instance(), box=box)


def _draw_pole(canvas: _Canvas, st: _Street) -> None:
    rng = st.rng
    side = int(rng.integers(2))
    lateral = st.road[side] + (-0.3 if side == 0 else 0.3) * rng.uniform(0.5, 1.5)
    depth = rng.uniform(3.0, 40.0)
    tall = rng.uniform(2.2, 3.6)
    cx, ground_y = st.project(lateral, 0.0, depth)
    _, top_y = st.project(lateral, tall, depth)
    half = max(st.scale(0.05, depth), 0.75)
    box = (top_y, ground_y + 1, cx - half, cx + half + 1)
    ys, xs = _grid(box, canvas.height, canvas.width)
    if ys.size and xs.size:
        pole = np.ones((ys.shape[0], xs.shape[1]), bool)
        shade = 1.0 - 0.35 * np.abs((xs - cx) / half)  # a round pole: darker at its edges
        colour = (_jitter(rng, [135, 135, 140], 15) * shade[..., None]).astype(np.float32)
        colour = np.broadcast_to(colour, (*pole.shape, 3))
        canvas.paint(pole, POLE, colour, depth, texture=4.0, instance=canvas.new_instance(), box=box)
    kind = rng.random()
    unit = st.scale(1.0, depth)
    if kind < 0.55:  # a traffic sign at the top
        radius = rng.uniform(0.22, 0.32) * unit
        cy = top_y + radius
        box = (cy - radius, cy + radius + 1, cx - radius, cx + radius + 1)
        ys, xs = _grid(box, canvas.height, canvas.width)
        if ys.size and xs.size:
            r = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) / radius
            square = rng.random() < 0.35
            face = (np.maximum(np.abs(ys - cy), np.abs(xs - cx)) <= radius) if square else (r <= 1.0)
            styles = [
                ([200, 30, 30], [235, 235, 235]),
                ([30, 80, 190], [30, 80, 190]),
                ([230, 200, 20], [40, 40, 40]),
            ]
            ring, inner = styles[rng.integers(len(styles))]
            colour = np.empty((*face.shape, 3), np.float32)
            colour[:] = inner
            colour[r > 0.7] = ring
            canvas.paint(
                face, TRAFFIC_SIGN, colour, depth - 0.01, texture=4.0, instance=canvas.new_instance(), box=box
            )
    elif kind < 0.85:  # a traffic light: dark housing with three lamps, one lit
        half_w, tall_px = 0.13 * unit, 0.6 * unit
        box = (top_y, top_y + tall_px + 1, cx - half_w, cx + half_w + 1)
        ys, xs = _grid(box, canvas.height, canvas.width)
        if ys.size and xs.size:
            housing = np.ones((ys.shape[0], xs.shape[1]), bool)
            colour = np.empty((*housing.shape, 3), np.float32)
            colour[:] = _jitter(rng, [35, 35, 30], 8)
            lit = rng.integers(3)
            for k, lamp_colour in enumerate(([230, 40, 30], [240, 180, 20], [40, 220, 90])):
                lamp = _ellipse(ys, xs, top_y + tall_px * (k + 0.5) / 3, cx, 0.08 * unit, 0.08 * unit)
                colour[lamp] = lamp_colour if k == lit else [70, 70, 60]
            canvas.paint(
                housing,
                TRAFFIC_LIGHT,
                colour,
                depth - 0.01,
                texture=3.0,
                instance=canvas.new_instance(),
                box=box,
            )


def _draw_ego_vehicle(canvas: _Canvas, st: _Street) -> None:
    rng = st.rng
    height, width = canvas.height, canvas.width
    rise = height * rng.uniform(0.05, 0.1)
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / (width / 2)
    top = height - rise * (1.0 - 0.45 * xs**2)  # a bonnet curving down towards the sides
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    bonnet = ys >= top[None, :]
    colour = _jitter(rng, [30, 30, 35], 8)
    canvas.paint(bonnet, EGO_VEHICLE, colour, 0.0, texture=3.0)


# ------------------------------------------------------------------------------------------------ dataset


def image_stem(city: str, index: int) -> str:
    """Cityscapes-style image id `<city>_<seq:06d>_<frame:06d>` (frame 19 is the annotated one in Cityscapes)."""
    return f"{city}_{index:06d}_000019"


def split_counts(num_images: int, splits: tuple[str, ...], val_fraction: float) -> dict[str, int]:
    """How many of `num_images` go to each split: with "train", `val_fraction` of them to each other split (at
    least 1 each) and the rest to "train"; without it, an even share to each (the first ones get the rest)."""
    if num_images < len(splits):
        raise UserError(f"--num-images: {num_images} is fewer than the number of splits ({len(splits)})")
    if len(splits) == 1:
        return {splits[0]: num_images}
    if "train" not in splits:
        share, rest = divmod(num_images, len(splits))
        return {s: share + (i < rest) for i, s in enumerate(splits)}
    held_out = [s for s in splits if s != "train"]
    per_held = max(1, round(num_images * val_fraction / len(held_out)))
    counts = {s: per_held for s in held_out}
    if "train" in splits:
        counts["train"] = num_images - per_held * len(held_out)
        if counts["train"] < 1:
            raise UserError(
                f"--num-images: {num_images} leaves no training image with val_fraction={val_fraction}"
            )
    return {s: counts[s] for s in splits}


def write_dataset(
    out: str | Path,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 512),
    splits: tuple[str, ...] = ("train", "val"),
    val_fraction: float = 0.2,
    write_color: bool = False,
    simple: bool = False,
) -> dict[str, int]:
    """Write a synthetic Cityscapes-layout dataset under `out`; returns the number of images per split.

    Image k of split s is rendered from `np.random.default_rng([seed, split_number, k])`, so it does not change
    with `num_images`. Files: `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`, `gtFine/<split>/<city>/
    <stem>_gtFine_labelIds.png` and `_gtFine_labelTrainIds.png` (and `_gtFine_color.png` with `write_color`).
    `simple` renders the six-class scenes of `render_scene_layers(..., simple=True)`.
    """
    out = Path(out)
    check_output(out, "--out", folder=True)
    if out.is_dir() and any(out.iterdir()):
        # Another set's images would stay beside these (other counts, sizes or seeds) and be trained on.
        raise UserError(f"--out: {out} is not empty; choose a new or empty folder")
    unknown = [s for s in splits if s not in SPLIT_CITIES]
    if unknown or not splits or len(set(splits)) != len(splits):
        raise UserError(
            f"--splits: {','.join(splits)}: expected distinct names from {', '.join(SPLIT_CITIES)}"
        )
    height, width = size
    if not (16 <= height <= MAX_SIDE and 16 <= width <= MAX_SIDE):
        raise UserError(f"--size: {height}x{width}: both sides must be 16 to {MAX_SIDE} pixels")
    counts = split_counts(num_images, tuple(splits), val_fraction)
    split_numbers = {name: i for i, name in enumerate(SPLIT_CITIES)}
    for split, count in counts.items():
        cities = SPLIT_CITIES[split]
        for k in range(count):
            rng = np.random.default_rng([seed, split_numbers[split], k])
            scene = render_scene_layers(rng, height, width, simple)
            city = cities[k % len(cities)]
            stem = image_stem(city, k)
            write_png(out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", scene.rgb)
            label_dir = out / "gtFine" / split / city
            write_png(label_dir / f"{stem}_gtFine_labelIds.png", scene.label_ids)
            write_png(label_dir / f"{stem}_gtFine_labelTrainIds.png", scene.train_ids)
            if write_color:
                write_png(label_dir / f"{stem}_gtFine_color.png", LABEL_ID_COLORS[scene.label_ids])
    return counts


MAX_SIDE = 16384  # pixels a side: 8 times the long side of a Cityscapes frame (1024 x 2048)


def parse_size(text: str) -> tuple[int, int]:
    """`"256x512"` -> (256, 512) (height, width); anything else is a `UserError` naming --size."""
    parts = [p.strip() for p in text.lower().split("x")]
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise UserError(f"--size: {text!r}: expected HEIGHTxWIDTH, e.g. 256x512")
    return int(parts[0]), int(parts[1])
