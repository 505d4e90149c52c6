"""Procedural street scenes: a clear source domain and shifted target domains.

Each scene is drawn in perspective (road and sidewalks converging at a vanishing point,
buildings along the horizon, trees, vehicles and people scaled by distance) with per-class
textures. Targets shift what a source model relies on: `fog` (depth-dependent haze), `night`
(low light, lit windows and lamps, sensor noise), `rain` (streaks, noise, blur), `sensor`
(colour-matrix and white-balance shift, vignetting) and `texture` (different material
appearance for every class). Layouts differ per domain; everything is deterministic per seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_png

from raysegment.config import SYNTH_DOMAINS
from raysegment.data.info import DatasetInfo
from raysegment.errors import DatasetError

CLASSES = ["road", "sidewalk", "building", "vegetation", "sky", "vehicle", "person"]
PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (70, 130, 180), (0, 0, 142), (220, 20, 60)]
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, VEHICLE, PERSON = range(7)
IGNORE = 255


@dataclass(frozen=True)
class Appearance:
    """Base colours (RGB in [0,1]) of each material; `texture` swaps the whole set."""

    road: tuple = (0.36, 0.36, 0.38)
    sidewalk: tuple = (0.62, 0.60, 0.56)
    buildings: tuple = ((0.62, 0.45, 0.35), (0.75, 0.72, 0.66), (0.45, 0.47, 0.52), (0.70, 0.60, 0.45))
    vegetation: tuple = (0.22, 0.48, 0.18)
    sky_top: tuple = (0.30, 0.52, 0.85)
    sky_bottom: tuple = (0.70, 0.82, 0.95)
    window: tuple = (0.18, 0.22, 0.30)


CLEAR = Appearance()
ALTERED = Appearance(
    road=(0.50, 0.34, 0.28),
    sidewalk=(0.40, 0.42, 0.50),
    buildings=((0.30, 0.55, 0.60), (0.85, 0.82, 0.50), (0.55, 0.30, 0.45), (0.35, 0.35, 0.30)),
    vegetation=(0.70, 0.50, 0.12),
    sky_top=(0.62, 0.62, 0.66),
    sky_bottom=(0.82, 0.80, 0.78),
    window=(0.60, 0.70, 0.75),
)


@dataclass
class Scene:
    image: np.ndarray  # (H,W,3) float in [0,1]
    mask: np.ndarray  # (H,W) uint8 class ids
    depth: np.ndarray  # (H,W) relative distance, 0 near .. 1 horizon/sky
    lights: np.ndarray  # (H,W) bool: windows and lamps that glow at night


def info() -> DatasetInfo:
    return DatasetInfo(name="synthetic-streets", classes=CLASSES, ignore_index=IGNORE, palette=PALETTE)


class Canvas:
    """One scene being drawn: image, class mask, depth and light masks, and the layout they share
    (horizon, vanishing point). Layers are drawn far to near, each drawing from the same `rng` in
    a fixed order, so a seed always gives the same scene."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, look: Appearance) -> None:
        self.rng, self.look, self.h, self.w = rng, look, height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.horizon = height * rng.uniform(0.38, 0.5)
        self.vx = width * rng.uniform(0.4, 0.6)
        self.img = np.zeros((height, width, 3), np.float32)
        self.mask = np.full((height, width), SKY, np.uint8)
        self.lights = np.zeros((height, width), bool)
        self.below = np.clip((self.yy - self.horizon) / (height - self.horizon), 0, 1)
        self.depth = np.where(self.yy > self.horizon, 1.0 - self.below, 1.0).astype(np.float32)

    def paint(self, region: np.ndarray, cls: int, colour, grain: float, d: float | None = None) -> None:
        noise = self.rng.normal(0, grain, (self.h, self.w, 1)).astype(np.float32)
        self.img[region] = np.clip(np.asarray(colour, np.float32) + noise[region], 0, 1)
        self.mask[region] = cls
        if d is not None:
            self.depth[region] = d

    def sky(self) -> None:
        """A vertical gradient with soft cloud blobs."""
        rng, xx, yy, w, horizon, look = self.rng, self.xx, self.yy, self.w, self.horizon, self.look
        t = np.clip(yy / max(horizon, 1), 0, 1)[..., None]
        self.img[:] = np.asarray(look.sky_top) * (1 - t) + np.asarray(look.sky_bottom) * t
        for _ in range(rng.integers(1, 4)):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, horizon * 0.7), rng.uniform(0.05, 0.15) * w
            blob = np.exp(-(((xx - cx) / r) ** 2 + ((yy - cy) / (0.4 * r)) ** 2))[..., None]
            self.img[:] = self.img * (1 - 0.5 * blob) + 0.97 * 0.5 * blob

    def buildings(self) -> None:
        """A row of facades standing on the horizon, with window grids (some lit)."""
        rng, xx, yy, h, w, horizon, look = self.rng, self.xx, self.yy, self.h, self.w, self.horizon, self.look
        x = 0.0
        while x < w:
            bw = rng.uniform(0.08, 0.22) * w
            top = horizon - rng.uniform(0.15, 0.9) * horizon
            region = (xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon + 0.04 * h)
            colour = look.buildings[rng.integers(len(look.buildings))]
            self.paint(region, BUILDING, colour, 0.03, d=0.85)
            step_x, step_y = rng.uniform(0.025, 0.04) * w, rng.uniform(0.05, 0.08) * h
            win = (
                region
                & (((xx - x) % step_x) < step_x * 0.5)
                & (((yy - top) % step_y) < step_y * 0.45)
                & (yy < horizon - 0.02 * h)
                & (yy > top + 0.02 * h)
            )
            self.img[win] = np.asarray(look.window) + rng.normal(0, 0.02, (int(win.sum()), 1))
            lit = win & (rng.random((h, w)) < 1.0) & (((xx - x) // step_x + (yy - top) // step_y) % 3 == 0)
            self.lights |= lit
            x += bw

    def ground(self) -> None:
        """Grass verge, sidewalks and road converging at the vanishing point, with tiles and dashes."""
        rng, xx, yy, h, w, horizon, look = self.rng, self.xx, self.yy, self.h, self.w, self.horizon, self.look
        ground = yy >= horizon + 0.04 * h * (1 - self.below)
        spread = (yy - horizon) / (h - horizon)
        road_half = spread * w * rng.uniform(0.45, 0.7)
        walk_half = road_half + spread * w * rng.uniform(0.15, 0.3)
        dist = np.abs(xx - self.vx)
        self.paint(ground & (yy > horizon), VEGETATION, np.asarray(look.vegetation) * 1.15, 0.08)
        walk = (yy > horizon) & (dist < walk_half)
        self.paint(walk, SIDEWALK, look.sidewalk, 0.03)
        tiles = walk & ((np.floor(yy / 4) + np.floor(xx / 6)) % 2 == 0)
        self.img[tiles] *= 0.92
        road = (yy > horizon) & (dist < road_half)
        self.paint(road, ROAD, look.road, 0.025)
        dashes = road & (dist < 0.012 * w * (0.3 + spread)) & ((np.log1p(np.maximum(yy - horizon, 0)) * 6) % 2 < 1)
        self.img[dashes] = 0.92

    def trees(self) -> None:
        """Trunk and canopy along the sidewalks, both vegetation."""
        rng, xx, yy, h, w, horizon = self.rng, self.xx, self.yy, self.h, self.w, self.horizon
        for _ in range(rng.integers(2, 6)):
            side = rng.choice([-1, 1])
            yb = rng.uniform(horizon + 0.1 * (h - horizon), h)
            s = (yb - horizon) / (h - horizon)
            cx = self.vx + side * (road_half_at(yb, horizon, h, w, rng) + s * w * 0.12)
            trunk = (np.abs(xx - cx) < 0.01 * w * s + 0.5) & (yy < yb) & (yy > yb - 0.5 * s * h)
            r = 0.08 * w * s + 2
            canopy = ((xx - cx) / r) ** 2 + ((yy - (yb - 0.5 * s * h)) / (0.9 * r)) ** 2 < 1
            self.paint(trunk | canopy, VEGETATION, self.look.vegetation, 0.1, d=1 - s)

    def vehicles(self) -> None:
        """Vehicles on the road, far ones first so near ones occlude them; glass and lit lamps."""
        rng, xx, yy, h, w, horizon = self.rng, self.xx, self.yy, self.h, self.w, self.horizon
        for yb in sorted(rng.uniform(horizon + 0.08 * (h - horizon), h, rng.integers(1, 5))):
            s = (yb - horizon) / (h - horizon)
            cx = self.vx + rng.uniform(-0.5, 0.5) * s * w * 0.5
            vw, vh = 0.22 * w * s + 3, 0.14 * h * s + 2
            body = (np.abs(xx - cx) < vw / 2) & (yy < yb) & (yy > yb - vh)
            self.paint(body, VEHICLE, rng.uniform(0.05, 0.95, 3), 0.02, d=1 - s)
            glass = body & (yy < yb - 0.55 * vh) & (np.abs(xx - cx) < vw * 0.38)
            self.img[glass] = (0.15, 0.18, 0.22)
            side_lamps = np.abs(np.abs(xx - cx) - vw * 0.38) < vw * 0.07
            lamps = body & (yy > yb - 0.35 * vh) & (yy < yb - 0.2 * vh) & side_lamps
            self.img[lamps] = (0.95, 0.9, 0.7)
            self.lights |= lamps

    def people(self) -> None:
        """People on the sidewalks: a body and a head."""
        rng, xx, yy, h, w, horizon = self.rng, self.xx, self.yy, self.h, self.w, self.horizon
        for _ in range(rng.integers(1, 5)):
            yb = rng.uniform(horizon + 0.1 * (h - horizon), h)
            s = (yb - horizon) / (h - horizon)
            side = rng.choice([-1, 1])
            cx = self.vx + side * (road_half_at(yb, horizon, h, w, rng) + s * w * 0.05)
            ph = 0.35 * h * s + 3
            pw = ph * 0.28
            body = (np.abs(xx - cx) < pw / 2) & (yy < yb) & (yy > yb - ph * 0.8)
            head = ((xx - cx) ** 2 + (yy - (yb - ph * 0.88)) ** 2) < (ph * 0.12) ** 2
            self.paint(body, PERSON, rng.uniform(0.1, 0.9, 3), 0.03, d=1 - s)
            self.paint(head, PERSON, (0.85, 0.65, 0.5), 0.02, d=1 - s)


def render_scene(rng: np.random.Generator, height: int, width: int, look: Appearance = CLEAR) -> Scene:
    """Draw one street scene; `rng` decides the layout and textures."""
    canvas = Canvas(rng, height, width, look)
    for layer in (canvas.sky, canvas.buildings, canvas.ground, canvas.trees, canvas.vehicles, canvas.people):
        layer()
    lights = canvas.lights & np.isin(canvas.mask, (BUILDING, VEHICLE))
    return Scene(np.clip(canvas.img, 0, 1), canvas.mask, np.clip(canvas.depth, 0, 1), lights)


def road_half_at(y: float, horizon: float, h: int, w: int, rng: np.random.Generator) -> float:
    return (y - horizon) / (h - horizon) * w * rng.uniform(0.5, 0.75)


def apply_domain(scene: Scene, domain: str, rng: np.random.Generator) -> np.ndarray:
    """Photometric shift of a rendered scene; returns (H,W,3) float in [0,1]."""
    img, h, w = scene.image.copy(), *scene.mask.shape
    if domain in ("clear", "texture"):
        img += rng.normal(0, 0.01, img.shape)
    elif domain == "fog":
        beta = rng.uniform(2.5, 4.0)
        t = np.exp(-beta * scene.depth)[..., None]
        airlight = rng.uniform(0.75, 0.9)
        img = img * t + airlight * (1 - t) + rng.normal(0, 0.01, img.shape)
    elif domain == "night":
        img = 0.25 * img**1.6 * np.asarray((0.8, 0.85, 1.15))
        img[scene.mask == SKY] = np.asarray((0.02, 0.03, 0.08))
        img[scene.lights] = np.asarray((1.0, 0.85, 0.45)) * rng.uniform(0.8, 1.0)
        img += rng.normal(0, 0.04, img.shape)
    elif domain == "rain":
        img = 0.75 * img + 0.1
        streaks = np.zeros((h, w), np.float32)
        for _ in range(int(h * w / 150)):
            x0, y0, length = rng.integers(0, w), rng.integers(0, h), rng.integers(4, 12)
            ys = np.clip(y0 + np.arange(length), 0, h - 1)
            xs = np.clip(x0 + np.arange(length) // 3, 0, w - 1)
            streaks[ys, xs] = 0.35
        img = _box_blur(img) + streaks[..., None] + rng.normal(0, 0.05, img.shape)
    elif domain == "sensor":
        angle = rng.uniform(0.6, 1.0) * rng.choice([-1, 1])
        img = np.clip(_rotate_hue(img, angle) * np.asarray(rng.uniform(0.75, 1.2, 3)), 0, 1)
        yy, xx = np.mgrid[0:h, 0:w]
        r2 = ((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2
        img = (img ** rng.uniform(0.7, 1.4)) * (1 - 1.2 * r2)[..., None] + rng.normal(0, 0.02, img.shape)
    else:
        raise DatasetError(f"unknown synthetic domain {domain!r}; choose from {', '.join(SYNTH_DOMAINS)}")
    return np.clip(img, 0, 1)


def _box_blur(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[1:-1, 1:-1] = (
        sum(
            img[1 + dy : img.shape[0] - 1 + dy, 1 + dx : img.shape[1] - 1 + dx]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )
        / 9
    )
    return out


def _rotate_hue(img: np.ndarray, angle: float) -> np.ndarray:
    """Rotate colours about the grey axis (a colour-matrix sensor shift)."""
    c, s = np.cos(angle), np.sin(angle)
    k = 1 / 3
    sq = np.sqrt(k)
    m = np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
            [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
            [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)],
        ],
        np.float32,
    )
    return img @ m.T


def generate(
    out: str | Path,
    domains: tuple[str, ...] = SYNTH_DOMAINS,
    images_per_domain: int = 60,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
    splits: tuple[float, float] = (0.6, 0.2),
) -> Path:
    """Write a raysegment-layout dataset; deterministic for a given seed."""
    if not (64 <= height <= 512 and 64 <= width <= 512):
        raise DatasetError(f"synthetic images must be 64..512 px per side, got {height}x{width}")
    if images_per_domain < 3:
        raise DatasetError(f"images_per_domain must be at least 3 (train/val/test), got {images_per_domain}")
    unknown = [d for d in domains if d not in SYNTH_DOMAINS]
    if unknown:
        raise DatasetError(f"unknown synthetic domains {unknown}; choose from {', '.join(SYNTH_DOMAINS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info().write(out)
    for domain in domains:
        folder = out / domain
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        domain_id = SYNTH_DOMAINS.index(domain)
        look = ALTERED if domain == "texture" else CLEAR
        stems = []
        for i in range(images_per_domain):
            layout_rng = np.random.default_rng([seed, domain_id, i, 0])
            shift_rng = np.random.default_rng([seed, domain_id, i, 1])
            scene = render_scene(layout_rng, height, width, look)
            image = apply_domain(scene, domain, shift_rng)
            stem = f"{domain}_{i:05d}"
            write_png(
                torch.from_numpy((image * 255 + 0.5).astype(np.uint8)).permute(2, 0, 1).contiguous(),
                str(folder / "images" / f"{stem}.png"),
            )
            write_png(torch.from_numpy(scene.mask)[None].contiguous(), str(folder / "masks" / f"{stem}.png"))
            stems.append(stem)
        n_train = max(1, int(splits[0] * len(stems)))
        n_val = max(1, int(splits[1] * len(stems)))
        split_map = {
            "train": stems[:n_train],
            "val": stems[n_train : n_train + n_val],
            "test": stems[n_train + n_val :],
        }
        (folder / "splits.json").write_text(json.dumps(split_map, indent=1))
    return out
