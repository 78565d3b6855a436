"""Procedural rendering of the built-in synthetic person re-ID data (numpy + OpenCV).

A person is drawn from an :class:`Identity` (body shape, skin, hair, clothing, bag) into
a scene of a :class:`CameraStyle` (background, lighting, colour cast, blur, noise,
viewpoint mix), in a walking pose, from the front, the back or the side. Everything is
drawn at ``SUPERSAMPLE`` times the output size into a label map (painter's order: each
part overwrites what is behind it), coloured from the label map, and area-downsampled,
which anti-aliases every edge; the person mask is the downsampled person labels
thresholded at one half, so it matches the picture exactly. Heads are sprites rendered
once per identity and view at high resolution (shaded skin, eye sockets, eyes, brows,
nose shadow, mouth; or hair from the back) so that MediaPipe's face detector finds the
faces of front views and not the backs of heads.

Random choices come from ``numpy.random.Generator`` objects the caller seeds, so a
picture depends only on its seed (byte-identical output for the same seed and OpenCV).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

SUPERSAMPLE = 2
"""Drawing resolution factor: parts are drawn at this multiple of the output size."""

COCO18 = ("nose", "neck", "Rsho", "Relb", "Rwri", "Lsho", "Lelb", "Lwri", "Rhip", "Rkne",
          "Rank", "Lhip", "Lkne", "Lank", "Leye", "Reye", "Lear", "Rear")
"""Keypoint order of the Pose-Transfer CSV files (SPECS.md)."""
KP = {name: i for i, name in enumerate(COCO18)}

VIEWS = ("front", "back", "side")

# ---------------------------------------------------------------- palettes (RGB)
SKIN_TONES = ((247, 214, 186), (236, 192, 158), (222, 170, 128), (196, 140, 100),
              (160, 108, 74), (118, 78, 52))
HAIR_COLOURS = ((28, 24, 24), (62, 40, 28), (105, 70, 42), (196, 160, 98), (150, 146, 140),
                (130, 58, 30))
HAIR_STYLES = ("short", "medium", "long", "bun")
# A deliberately small clothing palette: many identities share a colour and differ in
# the combination of colours, patterns, garments, hair, bag and body shape.
CLOTH = {
    "black": (36, 36, 40), "white": (222, 222, 216), "grey": (128, 128, 132),
    "navy": (38, 48, 96), "red": (172, 38, 44), "green": (44, 112, 64),
    "beige": (198, 178, 138), "blue": (64, 112, 178), "yellow": (214, 178, 44),
    "brown": (106, 72, 46),
}
UPPER_COLOURS = tuple(CLOTH)
LOWER_COLOURS = ("black", "navy", "grey", "beige", "blue", "brown", "white")
UPPER_PATTERNS = ("solid", "solid", "hstripes", "vstripes", "checks", "twotone", "logo")
LOWER_STYLES = ("trousers", "trousers", "shorts", "skirt")
SHOE_COLOURS = ((30, 30, 32), (225, 225, 225), (92, 60, 40))
BAGS = ("none", "none", "backpack", "shoulder", "handbag")

# label-map materials
BG, SKIN, UPPER, LOWER, SHOE, HAIR, BAG, STRAP = 0, 1, 2, 3, 4, 5, 6, 7
PERSON_LABELS = (SKIN, UPPER, LOWER, SHOE, HAIR, BAG, STRAP)


@dataclass(frozen=True)
class Identity:
    """What a synthetic person looks like; every field is part of their identity."""

    pid: int
    height: float           # relative body height (0.9 .. 1.06)
    build: float            # relative width (0.85 .. 1.2)
    skin: tuple
    hair_colour: tuple
    hair_style: str
    upper: str              # colour name
    upper2: str             # second colour of patterned tops
    pattern: str
    long_sleeves: bool
    lower: str
    lower_style: str
    shoes: tuple
    bag: str
    bag_colour: str
    walk_offset: float      # phase offset of the walking cycle

    def signature(self) -> tuple:
        """The clothing combination that must be unique between identities."""
        two = self.upper2 if self.pattern != "solid" else ""
        return (self.upper, two, self.pattern, self.lower, self.lower_style, self.bag,
                self.hair_style)


@dataclass(frozen=True)
class CameraStyle:
    """How a camera sees the world: scene, light, colour, optics and viewpoint mix."""

    index: int              # 1-based camera id
    scene: str
    gains: tuple            # per-channel colour cast (R, G, B)
    exposure: float
    gamma: float
    contrast: float
    saturation: float
    blur: float             # Gaussian sigma in output pixels at 128x64
    noise: float            # Gaussian noise sigma (0..255 scale)
    jpeg_quality: int
    view_probs: tuple       # P(front), P(back), P(side)
    person_scale: float     # person height / crop height
    light_side: float       # -1 light from the left .. +1 from the right
    horizon: float          # ground line as a fraction of the crop height


CAMERA_PRESETS = (
    # scene, gains, exposure, gamma, contrast, saturation, blur, noise, jpeg, views, scale, light
    ("brick", (1.12, 1.0, 0.82), 1.05, 0.95, 1.0, 1.0, 0.3, 2.0, 92, (0.65, 0.2, 0.15), 0.86, -0.6),
    ("glass", (0.84, 0.98, 1.22), 0.95, 1.05, 1.1, 0.85, 0.6, 3.0, 85, (0.2, 0.6, 0.2), 0.82, 0.5),
    ("park", (0.92, 1.12, 0.86), 1.12, 0.9, 0.9, 1.25, 0.9, 2.5, 88, (0.3, 0.25, 0.45), 0.88, 0.2),
    ("indoor", (1.2, 1.02, 0.64), 0.8, 1.15, 0.85, 0.7, 0.5, 5.0, 80, (0.45, 0.45, 0.1), 0.84, -0.2),
    ("street", (1.04, 0.86, 1.08), 1.0, 1.0, 1.2, 1.1, 1.2, 3.5, 78, (0.25, 0.3, 0.45), 0.9, 0.8),
    ("columns", (0.96, 1.0, 1.04), 0.72, 1.2, 1.05, 0.55, 0.4, 6.0, 90, (0.5, 0.25, 0.25), 0.8, -0.9),
    ("brick", (0.8, 0.92, 1.15), 1.1, 0.92, 1.0, 0.8, 0.8, 2.0, 86, (0.3, 0.5, 0.2), 0.85, 0.4),
    ("park", (1.15, 0.95, 0.9), 0.9, 1.1, 1.1, 1.15, 0.4, 4.0, 82, (0.5, 0.2, 0.3), 0.87, -0.4),
    ("street", (0.9, 1.05, 1.0), 1.15, 0.85, 0.95, 0.9, 1.0, 3.0, 90, (0.35, 0.35, 0.3), 0.83, 0.0),
)


# How different the cameras are. Calibrated (format version 2) so that a re-ID model trained on
# one camera still finds people in the others, at a fraction of an all-camera model's rank-1, as
# on Market-1501 (tools/synthetic_camera_gap.py; README "The synthetic world"). Measured one at a
# time, scenes and colour responses each put a one-camera model at chance on their own.
COLOUR_RESPONSE = 0.2
"""Share of each preset's colour cast, exposure, gamma, contrast and saturation (0: all neutral)."""
EXPOSURE_DRIFT = 0.2
"""Per-picture exposure change within a camera (light over the day), as a fraction."""
WHITE_BALANCE_DRIFT = 0.1
"""Per-picture, per-channel gain change within a camera (white balance drift), as a fraction."""
SECOND_SCENE_WIDTH = 4.0
"""Width, in crop widths, of a second scene beside each camera's main one (0: one scene only)."""
SECOND_SCENE_OFFSET = 2
"""The second scene of camera i is the main scene of preset i + this offset."""
BACKGROUND_CONTRAST = 0.25
"""Contrast of the scene textures around their mean colour (1: as drawn)."""


def make_cameras(n: int, rng: np.random.Generator) -> list[CameraStyle]:
    """Camera styles 1..n (n <= 9): hand-set presets with small seed-dependent jitter."""
    if not 1 <= n <= len(CAMERA_PRESETS):
        raise ValueError(f"cameras must be between 1 and {len(CAMERA_PRESETS)}, got {n}")
    cams = []
    for i in range(n):
        (scene, gains, exposure, gamma, contrast, sat, blur, noise, q, views, scale,
         light) = CAMERA_PRESETS[i]
        gains, exposure, gamma, contrast, sat = (
            1 + COLOUR_RESPONSE * (np.asarray(v, np.float64) - 1)
            for v in (gains, exposure, gamma, contrast, sat))
        jit = rng.uniform(0.97, 1.03, 3)
        cams.append(CameraStyle(
            index=i + 1, scene=scene, gains=tuple(float(g) for g in np.asarray(gains) * jit),
            exposure=float(exposure * rng.uniform(0.97, 1.03)), gamma=float(gamma),
            contrast=float(contrast), saturation=float(sat), blur=float(blur), noise=float(noise),
            jpeg_quality=int(q), view_probs=tuple(views), person_scale=float(scale),
            light_side=float(light), horizon=float(rng.uniform(0.55, 0.7))))
    return cams


def make_identities(pids: Sequence[int], rng: np.random.Generator) -> list[Identity]:
    """One identity per pid, with pairwise different clothing combinations."""
    out: list[Identity] = []
    seen: set = set()
    for pid in pids:
        for _ in range(200):
            upper = str(rng.choice(UPPER_COLOURS))
            upper2 = str(rng.choice([c for c in UPPER_COLOURS if c != upper]))
            ident = Identity(
                pid=int(pid), height=float(rng.uniform(0.9, 1.06)),
                build=float(rng.uniform(0.85, 1.2)),
                skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
                hair_colour=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
                hair_style=str(rng.choice(HAIR_STYLES)), upper=upper, upper2=upper2,
                pattern=str(rng.choice(UPPER_PATTERNS)), long_sleeves=bool(rng.random() < 0.5),
                lower=str(rng.choice(LOWER_COLOURS)), lower_style=str(rng.choice(LOWER_STYLES)),
                shoes=SHOE_COLOURS[rng.integers(len(SHOE_COLOURS))], bag=str(rng.choice(BAGS)),
                bag_colour=str(rng.choice(("black", "brown", "navy", "red", "grey"))),
                walk_offset=float(rng.uniform(0, 2 * math.pi)))
            if ident.signature() not in seen:
                break
        seen.add(ident.signature())
        out.append(ident)
    return out


# ---------------------------------------------------------------- head sprites
SPRITE_H, SPRITE_W = 160, 128
"""Head sprite size; the head oval spans HEAD_BOX of it (y0, y1, x0, x1 as fractions)."""
HEAD_BOX = (0.12, 0.88, 0.19, 0.81)


def _soft_ellipse(shape, centre, axes, angle=0.0, sigma=1.5) -> np.ndarray:
    """float32 mask in [0, 1] of a filled ellipse, blurred by ``sigma`` pixels."""
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, (int(round(centre[0] * 16)), int(round(centre[1] * 16))),
                (max(1, int(round(axes[0] * 16))), max(1, int(round(axes[1] * 16)))),
                angle, 0, 360, 255, -1, cv2.LINE_AA, 4)
    m = m.astype(np.float32) / 255.0
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigma)
    return m


def _mix(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """In place: img = img * (1 - alpha) + colour * alpha."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, np.float32)


def _shade(img: np.ndarray, alpha: np.ndarray, factor: float) -> None:
    """In place: darken (factor < 1) or lighten img by factor where alpha is 1."""
    img *= (1.0 + (factor - 1.0) * alpha)[..., None]


@dataclass
class _HeadCanvas:
    """The head sprite being drawn: RGB and alpha planes, pixel grids, the head's ellipse
    (centre cx, cy; radii rx, ry; top y0) and the identity's colours."""

    H: int
    W: int
    k: float
    cx: float
    cy: float
    rx: float
    ry: float
    y0: float
    skin: np.ndarray
    hair: np.ndarray
    img: np.ndarray = field(init=False)
    alpha: np.ndarray = field(init=False)
    yy: np.ndarray = field(init=False)
    xx: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.img = np.zeros((self.H, self.W, 3), np.float32)
        self.alpha = np.zeros((self.H, self.W), np.float32)
        self.yy, self.xx = np.mgrid[0:self.H, 0:self.W].astype(np.float32)

    def put(self, mask: np.ndarray, colour) -> None:
        """Paint ``colour`` where ``mask`` is 1 and make it opaque there."""
        _mix(self.img, mask, colour)
        np.maximum(self.alpha, mask, out=self.alpha)


def render_head(ident: Identity, view: str, facing: int = 1,
                scale: float = 1.0) -> tuple[np.ndarray, dict]:
    """Render a head sprite: (RGBA float32 [h, w, 4] with RGB in 0..255, keypoints
    {name: (y, x)} in sprite pixels for the visible nose/eyes/ears), where (h, w) is
    ``scale`` times (SPRITE_H, SPRITE_W).

    ``view`` is front/back/side; ``facing`` (+1 right, -1 left) orients side views.
    """
    k = float(scale)
    H, W = int(round(SPRITE_H * k)), int(round(SPRITE_W * k))
    y0, y1, x0, x1 = HEAD_BOX[0] * H, HEAD_BOX[1] * H, HEAD_BOX[2] * W, HEAD_BOX[3] * W
    c = _HeadCanvas(H, W, k, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2, y0,
                    np.asarray(ident.skin, np.float32), np.asarray(ident.hair_colour, np.float32))
    neck = _neck(c, view, facing)
    if view == "front":
        kps = _front_head(c, ident, neck)
    elif view == "back":
        kps = _back_head(c, ident)
    else:
        kps = _side_head(c, ident, facing)
    img = cv2.GaussianBlur(c.img, (0, 0), 0.6 * k)
    rgba = np.dstack([np.clip(img, 0, 255), np.clip(c.alpha, 0, 1)])
    return rgba.astype(np.float32), kps


def _neck(c: _HeadCanvas, view: str, facing: int) -> np.ndarray:
    """The neck below the chin (drawn first); returns its mask."""
    neck = np.zeros((c.H, c.W), np.float32)
    nw = c.rx * (0.5 if view != "side" else 0.55)
    ncx = c.cx if view != "side" else c.cx - facing * c.rx * 0.1
    cv2.rectangle(neck, (int(ncx - nw), int(c.cy + c.ry * 0.5)), (int(ncx + nw), c.H), 1.0, -1)
    neck = cv2.GaussianBlur(neck, (0, 0), 1.2 * c.k)
    c.put(neck, c.skin * 0.78)
    return neck


def _front_head(c: _HeadCanvas, ident: Identity, neck: np.ndarray) -> dict:
    """A face: ears, skin, hair cap, eyes, brows, nose, mouth, chin shadow."""
    cx, cy, rx, ry = c.cx, c.cy, c.rx, c.ry
    _face_skin(c)
    _front_hair(c, ident)
    # eye sockets, eyes (greyish sclera, large dark iris, upper lid), brows. These and
    # the mouth were tuned against MediaPipe's face detector (tools/bench_synthetic.py).
    ey = cy + ry * 0.05
    ex_off = 0.38
    for s in (-1, 1):
        _eye(c, cx + s * rx * ex_off, ey, es=0.9)
    ny = _nose_and_mouth(c)
    # shadow under the chin
    _shade(c.img, _soft_ellipse((c.H, c.W), (cx, cy + ry * 1.02), (rx * 0.55, ry * 0.12), sigma=2.5 * c.k)
           * neck, 0.6)
    return {"nose": (ny - ry * 0.05, cx), "Reye": (ey, cx - rx * ex_off), "Leye": (ey, cx + rx * ex_off),
            "Rear": (cy, cx - rx * 0.98), "Lear": (cy, cx + rx * 0.98)}


def _face_skin(c: _HeadCanvas) -> None:
    """Ears and the shaded skin of the face."""
    H, W, k, img, xx, yy = c.H, c.W, c.k, c.img, c.xx, c.yy
    cx, cy, rx, ry = c.cx, c.cy, c.rx, c.ry
    for s in (-1, 1):
        c.put(_soft_ellipse((H, W), (cx + s * rx * 0.98, cy + ry * 0.02), (rx * 0.16, ry * 0.2)),
              c.skin * 0.85)
    head = _soft_ellipse((H, W), (cx, cy), (rx, ry), sigma=1.2 * k)
    c.put(head, c.skin)
    r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    _shade(img, head * np.clip(r2, 0, 1) ** 2, 0.7)


def _front_hair(c: _HeadCanvas, ident: Identity) -> None:
    """Hair seen from the front: a cap over the top, the forehead free below the hairline; side
    locks (medium, long) or a bun."""
    H, W, k, img, yy = c.H, c.W, c.k, c.img, c.yy
    cx, cy, rx, ry, y0 = c.cx, c.cy, c.rx, c.ry, c.y0
    hair_m = _soft_ellipse((H, W), (cx, cy - ry * 0.12), (rx * 1.1, ry * 0.98), sigma=1.0 * k)
    hairline = cy - ry * 0.55
    forehead = _soft_ellipse((H, W), (cx, hairline + ry * 0.75), (rx * 0.86, ry * 0.8), sigma=1.5 * k)
    side_len = {"short": 0.05, "medium": 0.45, "long": 0.9, "bun": 0.0}[ident.hair_style]
    cut = np.clip((cy + ry * side_len - yy) / 2.0, 0, 1)
    hair_m = hair_m * (1 - forehead) * cut
    if ident.hair_style in ("medium", "long"):
        for s in (-1, 1):
            lock = _soft_ellipse((H, W), (cx + s * rx * 0.95, cy + ry * 0.1),
                                 (rx * 0.2, ry * (0.6 if ident.hair_style == "medium" else 0.95)))
            hair_m = np.maximum(hair_m, lock * (1 - forehead))
    if ident.hair_style == "bun":
        hair_m = np.maximum(hair_m, _soft_ellipse((H, W), (cx, y0 - ry * 0.08), (rx * 0.38, ry * 0.2)))
    c.put(hair_m, c.hair)
    _shade(img, hair_m * np.clip((yy - y0) / (2 * ry), 0, 1), 0.75)


def _eye(c: _HeadCanvas, ex: float, ey: float, es: float) -> None:
    """One eye at (``ey``, ``ex``), ``es`` its scale: socket shadow, brow, sclera, iris, upper lid."""
    H, W, k, img = c.H, c.W, c.k, c.img
    rx, ry = c.rx, c.ry
    _shade(img, _soft_ellipse((H, W), (ex, ey), (rx * 0.3 * es, ry * 0.16 * es), sigma=2.5 * k), 0.62)
    brow = np.zeros((H, W), np.float32)
    cv2.ellipse(brow, (int(ex * 16), int((ey - ry * 0.1 * es) * 16)),
                (int(rx * 0.3 * es * 16), int(ry * 0.1 * es * 16)), 0, 200, 340, 1.0,
                max(2, int(ry * 0.08)), cv2.LINE_AA, 4)
    c.put(cv2.GaussianBlur(brow, (0, 0), 1.0 * k), c.hair * 0.6)
    c.put(_soft_ellipse((H, W), (ex, ey), (rx * 0.2 * es, ry * 0.075 * es), sigma=1.0 * k), (180, 175, 170))
    c.put(_soft_ellipse((H, W), (ex, ey), (rx * 0.1 * es * 1.5, ry * 0.085 * es), sigma=0.8 * k), (40, 28, 22))
    lid = np.zeros((H, W), np.float32)
    cv2.ellipse(lid, (int(ex * 16), int(ey * 16)), (int(rx * 0.22 * es * 16), int(ry * 0.09 * es * 16)),
                0, 190, 350, 1.0, max(1, int(ry * 0.04)), cv2.LINE_AA, 4)
    c.put(cv2.GaussianBlur(lid, (0, 0), 0.8 * k), (30, 22, 20))


def _nose_and_mouth(c: _HeadCanvas) -> float:
    """Nose (shadow along one side, dark nostrils, light tip) and mouth; returns the nostrils' y."""
    H, W, k, img = c.H, c.W, c.k, c.img
    cx, cy, rx, ry, skin = c.cx, c.cy, c.rx, c.ry, c.skin
    ny = cy + ry * 0.3
    _shade(img, _soft_ellipse((H, W), (cx - rx * 0.1, cy + ry * 0.15), (rx * 0.07, ry * 0.22),
                              sigma=2.0 * k), 0.8)
    _shade(img, _soft_ellipse((H, W), (cx, ny), (rx * 0.2, ry * 0.06), sigma=1.2 * k), 0.6)
    _shade(img, _soft_ellipse((H, W), (cx + rx * 0.05, cy + ry * 0.2), (rx * 0.07, ry * 0.08),
                              sigma=1.5 * k), 1.12)
    my = cy + ry * 0.55
    mw = 0.4
    c.put(_soft_ellipse((H, W), (cx, my), (rx * mw, ry * 0.12), sigma=1.0 * k),
          skin * np.array([0.58, 0.36, 0.36], np.float32))
    lip = np.zeros((H, W), np.float32)
    cv2.line(lip, (int(cx - rx * mw * 0.93), int(my)), (int(cx + rx * mw * 0.93), int(my)), 1.0,
             max(1, int(ry * 0.04)), cv2.LINE_AA)
    c.put(cv2.GaussianBlur(lip, (0, 0), 0.7 * k), skin * 0.35)
    return ny


def _back_head(c: _HeadCanvas, ident: Identity) -> dict:
    """The back of the head: ears, then hair over the whole skull down to the nape."""
    H, W, k, img, xx, yy = c.H, c.W, c.k, c.img, c.xx, c.yy
    cx, cy, rx, ry, y0 = c.cx, c.cy, c.rx, c.ry, c.y0
    skin, hair, put = c.skin, c.hair, c.put
    # the back of the head: ears, then hair over the whole skull down to the nape
    for s in (-1, 1):
        put(_soft_ellipse((H, W), (cx + s * rx * 0.98, cy + ry * 0.02), (rx * 0.16, ry * 0.2)),
            skin * 0.85)
    head = _soft_ellipse((H, W), (cx, cy), (rx, ry), sigma=1.2 * k)
    put(head, skin * 0.9)
    low = {"short": 0.62, "medium": 0.95, "long": 1.5, "bun": 0.6}[ident.hair_style]
    hair_m = _soft_ellipse((H, W), (cx, cy - ry * 0.05), (rx * 1.08, ry * 1.0), sigma=1.0 * k)
    hair_m = hair_m * np.clip((cy + ry * low - yy) / 2.0, 0, 1)
    if ident.hair_style in ("medium", "long"):
        drop = _soft_ellipse((H, W), (cx, cy + ry * 0.5), (rx * 1.0, ry * (0.5 if ident.hair_style == "medium" else 1.0)))
        hair_m = np.maximum(hair_m, drop)
    if ident.hair_style == "bun":
        hair_m = np.maximum(hair_m, _soft_ellipse((H, W), (cx, y0 + ry * 0.1), (rx * 0.42, ry * 0.3)))
    put(hair_m, hair)
    # strands: vertical streaks, darker towards the neck
    streak = (0.9 + 0.1 * np.sin(xx * 1.3 / k + 0.5 * np.sin(yy * 0.2 / k))).astype(np.float32)
    img *= (1 + (streak - 1) * hair_m)[..., None]
    _shade(img, hair_m * np.clip((yy - y0) / (2 * ry), 0, 1), 0.7)
    return {"Rear": (cy, cx + rx * 0.98), "Lear": (cy, cx - rx * 0.98)}


def _side_head(c: _HeadCanvas, ident: Identity, facing: int) -> dict:
    """A profile looking towards ``facing``."""
    H, W, k, img, xx, yy = c.H, c.W, c.k, c.img, c.xx, c.yy
    cx, cy, rx, ry, y0 = c.cx, c.cy, c.rx, c.ry, c.y0
    skin, hair, put = c.skin, c.hair, c.put
    f = facing
    head = _soft_ellipse((H, W), (cx, cy), (rx * 0.98, ry), sigma=1.2 * k)
    nose = _soft_ellipse((H, W), (cx + f * rx * 0.95, cy + ry * 0.22), (rx * 0.16, ry * 0.1), sigma=1.0 * k)
    chin = _soft_ellipse((H, W), (cx + f * rx * 0.6, cy + ry * 0.72), (rx * 0.32, ry * 0.22), sigma=1.0 * k)
    face = np.maximum(np.maximum(head, nose), chin)
    put(face, skin)
    r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    _shade(img, face * np.clip(r2, 0, 1) ** 2, 0.75)
    # hair covers the back half and the top
    hair_m = _soft_ellipse((H, W), (cx - f * rx * 0.25, cy - ry * 0.1), (rx * 0.95, ry * 0.98), sigma=1.0 * k)
    hair_m *= np.clip((cy + ry * 0.35 - yy) / 2.0, 0, 1) + (f * (xx - cx) < -rx * 0.1)
    hair_m = np.clip(hair_m, 0, 1)
    front_face = np.clip((f * (xx - cx) - rx * 0.05) / 3.0, 0, 1) * np.clip((yy - (cy - ry * 0.45)) / 3.0, 0, 1)
    hair_m *= 1 - front_face
    low = {"short": 0.45, "medium": 0.9, "long": 1.4, "bun": 0.45}[ident.hair_style]
    hair_m *= np.clip((cy + ry * low - yy) / 2.0, 0, 1)
    if ident.hair_style == "bun":
        hair_m = np.maximum(hair_m, _soft_ellipse((H, W), (cx - f * rx * 0.95, cy - ry * 0.5), (rx * 0.3, ry * 0.25)))
    put(hair_m, hair)
    _shade(img, hair_m * np.clip((yy - y0) / (2 * ry), 0, 1), 0.75)
    ear = _soft_ellipse((H, W), (cx - f * rx * 0.1, cy + ry * 0.05), (rx * 0.14, ry * 0.2))
    put(ear * (1 - hair_m * (ident.hair_style in ("medium", "long"))), skin * 0.85)
    ex, ey = cx + f * rx * 0.6, cy - ry * 0.02
    _shade(img, _soft_ellipse((H, W), (ex, ey), (rx * 0.2, ry * 0.12), sigma=2.0 * k), 0.7)
    put(_soft_ellipse((H, W), (ex, ey), (rx * 0.07, ry * 0.07), sigma=0.8 * k), (40, 28, 22))
    put(_soft_ellipse((H, W), (cx + f * rx * 0.72, cy + ry * 0.55), (rx * 0.16, ry * 0.05), sigma=1.0 * k),
        skin * np.array([0.72, 0.45, 0.45], np.float32))
    near = "R" if f > 0 else "L"
    return {"nose": (cy + ry * 0.22, cx + f * rx * 1.02), f"{near}eye": (ey, ex),
           f"{near}ear": (cy + ry * 0.05, cx - f * rx * 0.1)}


def _noise_field(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Smooth random field in [0, 1]: upsampled uniform noise (value noise)."""
    h, w = shape
    small = rng.random((max(2, int(h / scale)) + 1, max(2, int(w / scale)) + 1)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def render_scene(scene: str, shape: tuple[int, int], horizon: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A wide background picture (RGB float32 0..255) of ``shape`` (h, w) for a scene kind:
    brick, glass, park, indoor, street or columns; the ground starts at ``horizon`` * h."""
    h, w = shape
    gy = int(h * horizon)
    img = np.zeros((h, w, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = h / 128.0  # pixels per output-pixel-at-128
    tex = _noise_field(rng, (h, w), 6 * u)[..., None]
    ground = _WALLS.get(scene, _columns_wall)(img, xx, yy, u, tex, gy, rng)
    gtex = _noise_field(rng, (h - gy, w), 4 * u)[..., None]
    img[gy:] = np.asarray(ground, np.float32) * (0.8 + 0.35 * gtex)
    if scene in ("indoor", "columns"):     # tiles
        tile = (((xx[gy:] // (16 * u)) + (yy[gy:] // (6 * u))) % 2)[..., None]
        img[gy:] *= 0.92 + 0.12 * tile
    elif scene == "street":                 # kerb and road marking
        img[gy:gy + int(3 * u)] = (170, 170, 165)
        img[gy + int(20 * u):gy + int(22 * u), ::] *= np.where((xx[0] // (20 * u)) % 2, 1.0, 2.2)[:, None]
    img *= (0.94 + 0.12 * tex)
    return np.clip(img, 0, 255)


# A scene's wall, painted into ``img`` (float32 [h, w, 3]) from the pixel grids ``xx``/``yy``,
# ``u`` pixels per pixel-at-128, the texture ``tex`` and the ground's top row ``gy``; each returns
# the colour of its ground.

def _brick_wall(img, xx, yy, u, tex, gy, rng) -> tuple:
    img[:] = (150, 72, 52)
    bh, bw = 5 * u, 13 * u
    row = (yy // bh).astype(int)
    off = (row % 2) * bw / 2
    mortar = ((yy % bh) < 0.8 * u) | (((xx + off) % bw) < 0.8 * u)
    img[mortar] = (190, 180, 165)
    img *= 0.85 + 0.3 * tex
    return (118, 112, 104)


def _glass_wall(img, xx, yy, u, tex, gy, rng) -> tuple:
    img[:] = (70, 90, 105)
    panel = ((xx % (24 * u)) < 1.5 * u) | ((yy % (40 * u)) < 1.5 * u)
    refl = np.clip(np.sin((xx + yy * 0.6) / (9 * u)), 0, 1)[..., None]
    img += refl * np.array([60, 70, 80], np.float32)
    img[panel] = (45, 45, 50)
    return (160, 158, 150)


def _park_wall(img, xx, yy, u, tex, gy, rng) -> tuple:
    h, w = img.shape[:2]
    img[:] = (70, 120, 60)
    img *= 0.6 + 0.7 * _noise_field(rng, (h, w), 2.5 * u)[..., None]
    sky = yy < h * 0.22
    img[sky] = (175, 200, 225)
    return (150, 135, 100)


def _indoor_wall(img, xx, yy, u, tex, gy, rng) -> tuple:
    img[:] = (205, 196, 176)
    img[(xx % (30 * u)) < 2 * u] = (150, 140, 125)
    img[(yy > gy - 10 * u) & (yy < gy)] = (120, 100, 80)  # skirting board
    return (175, 150, 115)


def _street_wall(img, xx, yy, u, tex, gy, rng) -> tuple:
    h, w = img.shape[:2]
    img[:] = (120, 128, 136)
    for i in range(int(w / (18 * u)) + 1):  # shop fronts and poles
        x0 = int(i * 18 * u + rng.uniform(0, 6 * u))
        colour = rng.uniform(60, 200, 3)
        cv2.rectangle(img, (x0, int(h * 0.1)), (x0 + int(12 * u), gy - int(6 * u)), colour.tolist(), -1)
    return (82, 82, 86)


def _columns_wall(img, xx, yy, u, tex, gy, rng) -> tuple:
    img[:] = (168, 168, 162)
    img[((xx % (40 * u)) > 26 * u)] = (120, 120, 118)
    img *= (0.85 + 0.15 * np.cos(xx / (40 * u) * 2 * np.pi))[..., None]
    return (140, 136, 130)


_WALLS = {"brick": _brick_wall, "glass": _glass_wall, "park": _park_wall, "indoor": _indoor_wall,
          "street": _street_wall}   # anything else: columns


# ---------------------------------------------------------------- the person
@dataclass
class Pose:
    """Where the person is and how they move in one picture."""

    view: str          # front / back / side
    facing: int        # side views: +1 right, -1 left
    phase: float       # walking phase (radians)
    cx: float          # centre x (canvas px)
    foot_y: float      # ground contact y (canvas px)
    height: float      # person height (canvas px)


def skeleton(ident: Identity, pose: Pose) -> dict:
    """COCO-18 body keypoints (without the face points) and the head box, in canvas px.

    Returns {name: (x, y)} plus 'head' -> (x, y, w, h) of the head oval and 'far' -> the set
    of limbs behind the body (drawn first) for side views.
    """
    u = pose.height
    y0 = pose.foot_y - u
    cx = pose.cx
    ph = pose.phase + ident.walk_offset
    k: dict = {}
    head_h = 0.16 * u
    head_w = head_h * 0.74
    lean = 0.0
    if pose.view == "side":
        lean = _side_limbs(k, pose, y0, ph)
    else:
        _front_back_limbs(k, ident, pose, y0, ph)
    k["head"] = (cx + lean * 1.5, y0 + head_h / 2 + 0.005 * u, head_w, head_h)
    return k


def _side_limbs(k: dict, pose: Pose, y0: float, ph: float) -> float:
    """Neck, arms and legs of a side view (walking towards ``pose.facing``) into ``k``, the far
    side named in ``k["far"]``; returns the body's forward lean in px."""
    u, cx, f = pose.height, pose.cx, pose.facing
    lean = f * 0.015 * u
    k["neck"] = (cx + lean, y0 + 0.18 * u)
    sh_y, hip_y = y0 + 0.205 * u, y0 + 0.53 * u
    for side, sgn in (("R", 1), ("L", -1)):
        near = (side == "R") == (f > 0)
        dx = (0.02 * u if near else -0.02 * u)
        swing = 0.42 * math.sin(ph) * sgn
        bend = 0.55 * max(0.0, math.sin(ph + 1.2) * sgn)
        hip = (cx + dx * 0.5, hip_y)
        knee = (hip[0] + f * 0.22 * u * math.sin(swing), hip[1] + 0.22 * u * math.cos(swing))
        a2 = swing - bend
        ank = (knee[0] + f * 0.22 * u * math.sin(a2), knee[1] + 0.22 * u * math.cos(a2))
        k[side + "hip"], k[side + "kne"], k[side + "ank"] = hip, knee, ank
        arm = -0.5 * math.sin(ph) * sgn
        sho = (cx + lean + dx * 0.5, sh_y)
        elb = (sho[0] + f * 0.15 * u * math.sin(arm), sho[1] + 0.15 * u * math.cos(arm))
        a3 = arm + 0.35
        wri = (elb[0] + f * 0.14 * u * math.sin(a3), elb[1] + 0.14 * u * math.cos(a3))
        k[side + "sho"], k[side + "elb"], k[side + "wri"] = sho, elb, wri
    k["far"] = "L" if f > 0 else "R"
    return lean


def _front_back_limbs(k: dict, ident: Identity, pose: Pose, y0: float, ph: float) -> None:
    """Neck, arms and legs of a front or back view into ``k`` (no far side)."""
    u, b, cx = pose.height, ident.build, pose.cx
    mirror = -1 if pose.view == "front" else 1   # person's right on image left when facing us
    k["neck"] = (cx, y0 + 0.18 * u)
    for side, sgn in (("R", 1), ("L", -1)):
        s = mirror * sgn                           # image direction of this side
        swing = 0.42 * math.sin(ph) * sgn          # + = leg forward (towards the camera for front)
        towards = swing if pose.view == "front" else -swing
        sho = (cx + s * 0.118 * u * b, y0 + 0.205 * u)
        elb = (sho[0] + s * 0.018 * u, sho[1] + 0.15 * u * math.cos(0.5 * swing))
        wri = (elb[0] + s * 0.008 * u, elb[1] + 0.14 * u * math.cos(0.5 * swing + 0.3 * abs(swing)))
        hip = (cx + s * 0.062 * u * b, y0 + 0.53 * u)
        lift = 0.05 * u * max(0.0, -towards * 2)
        knee = (hip[0] + s * 0.006 * u, hip[1] + 0.215 * u * math.cos(swing) + 0.02 * u * towards)
        ank = (knee[0] + s * 0.004 * u, hip[1] + 0.44 * u * math.cos(swing) - lift + 0.05 * u * towards)
        k[side + "sho"], k[side + "elb"], k[side + "wri"] = sho, elb, wri
        k[side + "hip"], k[side + "kne"], k[side + "ank"] = hip, knee, ank
    k["far"] = ""


def _pt(p, s=16):
    return (int(round(p[0] * s)), int(round(p[1] * s)))


def _line(lab, a, b, label, width):
    cv2.line(lab, _pt(a), _pt(b), label, max(1, int(round(width))), cv2.LINE_8, 4)


def _poly(lab, pts, label):
    cv2.fillPoly(lab, [np.array([_pt(p) for p in pts], np.int32)], label, cv2.LINE_8, 4)


class _BodyPainter:
    """Paints one person's body parts (not the head) into a label map in painter's order:
    the far limbs, the torso, the near limbs, bags, long hair over the back."""

    def __init__(self, lab: np.ndarray, ident: Identity, k: dict, pose: Pose) -> None:
        self.lab, self.ident, self.k, self.pose = lab, ident, k, pose
        self.u, self.b = pose.height, ident.build
        self.side_view = pose.view == "side"
        self.f = pose.facing
        self.sleeve = UPPER if ident.long_sleeves else SKIN
        self.leg_w = (0.075 if not self.side_view else 0.085) * self.u * self.b
        self.shin_w = self.leg_w * 0.8
        self.arm_w, self.fore_w = 0.05 * self.u * self.b, 0.042 * self.u * self.b
        self.lower_leg = SKIN if ident.lower_style in ("shorts", "skirt") else LOWER

    def leg(self, side):
        """Thigh, shin (trousers, shorts or skin), shoe."""
        lab, ident, k, u, f, side_view = self.lab, self.ident, self.k, self.u, self.f, self.side_view
        hip, knee, ank = k[side + "hip"], k[side + "kne"], k[side + "ank"]
        _line(lab, hip, knee, LOWER if ident.lower_style != "skirt" else SKIN, self.leg_w)
        _line(lab, knee, ank, self.lower_leg, self.shin_w)
        if ident.lower_style == "shorts":
            mid = ((hip[0] + knee[0] * 3) / 4, (hip[1] + knee[1] * 3) / 4)
            _line(lab, hip, mid, LOWER, self.leg_w * 1.05)
        toe = (ank[0] + (f * 0.05 * u if side_view else 0), ank[1] + 0.02 * u)
        _line(lab, ank, toe, SHOE, self.shin_w * 1.05)

    def arm(self, side):
        """Upper arm, forearm (self.sleeve or skin), hand."""
        lab, k = self.lab, self.k
        sho, elb, wri = k[side + "sho"], k[side + "elb"], k[side + "wri"]
        _line(lab, sho, elb, UPPER, self.arm_w)
        _line(lab, elb, wri, self.sleeve, self.fore_w)
        cv2.circle(lab, _pt(wri), int(round(self.fore_w * 0.62 * 16)), SKIN, -1, cv2.LINE_8, 4)

    def torso(self):
        """Shirt and waistband (and a skirt)."""
        lab, ident, k, u, b, side_view = self.lab, self.ident, self.k, self.u, self.b, self.side_view
        if side_view:
            tw = 0.075 * u * b
            sh, hp = k["Rsho"], k["Rhip"]
            top = ((k["Rsho"][0] + k["Lsho"][0]) / 2, sh[1] - 0.01 * u)
            bot = ((k["Rhip"][0] + k["Lhip"][0]) / 2, hp[1] + 0.03 * u)
            _poly(lab, [(top[0] - tw, top[1]), (top[0] + tw, top[1]), (bot[0] + tw * 0.95, bot[1]),
                        (bot[0] - tw * 0.95, bot[1])], UPPER)
            _poly(lab, [(bot[0] - tw * 0.95, bot[1] - 0.05 * u), (bot[0] + tw * 0.95, bot[1] - 0.05 * u),
                        (bot[0] + tw, bot[1] + 0.06 * u), (bot[0] - tw, bot[1] + 0.06 * u)], LOWER)
        else:
            rs, ls, rh, lh = k["Rsho"], k["Lsho"], k["Rhip"], k["Lhip"]
            xl, xr = min(rs[0], ls[0]), max(rs[0], ls[0])
            hl, hr = min(rh[0], lh[0]), max(rh[0], lh[0])
            y_s, y_h = rs[1], rh[1]
            pad = 0.03 * u * b
            _poly(lab, [(xl + 0.01 * u, y_s - 0.02 * u), (xr - 0.01 * u, y_s - 0.02 * u),
                        (xr + 0.005 * u, y_s + 0.03 * u), (hr + pad * 0.8, y_h + 0.03 * u),
                        (hl - pad * 0.8, y_h + 0.03 * u), (xl - 0.005 * u, y_s + 0.03 * u)], UPPER)
            _poly(lab, [(hl - pad * 0.8, y_h - 0.01 * u), (hr + pad * 0.8, y_h - 0.01 * u),
                        (hr + pad * 0.7, y_h + 0.09 * u), (hl - pad * 0.7, y_h + 0.09 * u)], LOWER)
        if ident.lower_style == "skirt":
            hip_y = k["Rhip"][1]
            hx = (k["Rhip"][0] + k["Lhip"][0]) / 2
            sw0, sw1 = 0.09 * u * b, 0.13 * u * b
            if side_view:
                sw0, sw1 = sw0 * 0.8, sw1 * 0.9
            _poly(lab, [(hx - sw0, hip_y - 0.01 * u), (hx + sw0, hip_y - 0.01 * u),
                        (hx + sw1, hip_y + 0.2 * u), (hx - sw1, hip_y + 0.2 * u)], LOWER)

    def backpack(self, front_side: bool):
        """A backpack: the bag from behind or the side, the straps from the front."""
        lab, k, u, b, f, side_view = self.lab, self.k, self.u, self.b, self.f, self.side_view
        nx, ny = k["neck"]
        bw, bh = 0.1 * u * b, 0.22 * u
        if side_view:
            bx = nx - f * 0.1 * u * b
            _poly(lab, [(bx - 0.05 * u, ny + 0.03 * u), (bx + 0.05 * u, ny + 0.03 * u),
                        (bx + 0.05 * u, ny + 0.03 * u + bh), (bx - 0.05 * u, ny + 0.03 * u + bh)], BAG)
        elif front_side:   # only the straps are seen from the front
            for s in (-1, 1):
                _line(lab, (nx + s * 0.07 * u, ny + 0.02 * u), (nx + s * 0.08 * u, ny + 0.2 * u), STRAP,
                      0.018 * u)
        else:
            _poly(lab, [(nx - bw, ny + 0.04 * u), (nx + bw, ny + 0.04 * u), (nx + bw * 1.05, ny + 0.04 * u + bh),
                        (nx - bw * 1.05, ny + 0.04 * u + bh)], BAG)

    def shoulder_bag(self):
        """A bag on a strap across the body, at the hip."""
        lab, k, pose, u, f, side_view = self.lab, self.k, self.pose, self.u, self.f, self.side_view
        nx, ny = k["neck"]
        side = "L" if pose.view != "side" else k["far"] or "L"
        hip = k[side + "hip"]
        hx = hip[0] + (hip[0] - nx) * 0.8 if not side_view else hip[0] - f * 0.06 * u
        _line(lab, (nx, ny + 0.02 * u), (hx, hip[1] - 0.02 * u), STRAP, 0.016 * u)
        _poly(lab, [(hx - 0.05 * u, hip[1] - 0.04 * u), (hx + 0.05 * u, hip[1] - 0.04 * u),
                    (hx + 0.05 * u, hip[1] + 0.06 * u), (hx - 0.05 * u, hip[1] + 0.06 * u)], BAG)

    def handbag(self):
        """A bag in the hand."""
        lab, k, u, f, side_view = self.lab, self.k, self.u, self.f, self.side_view
        side = "R" if not side_view else ("R" if f > 0 else "L")
        wx, wy = k[side + "wri"]
        _line(lab, (wx, wy), (wx, wy + 0.04 * u), STRAP, 0.012 * u)
        _poly(lab, [(wx - 0.045 * u, wy + 0.035 * u), (wx + 0.045 * u, wy + 0.035 * u),
                    (wx + 0.055 * u, wy + 0.12 * u), (wx - 0.055 * u, wy + 0.12 * u)], BAG)

    def draw(self) -> None:
        lab, ident, k, pose, side_view = self.lab, self.ident, self.k, self.pose, self.side_view
        leg, arm, torso = self.leg, self.arm, self.torso
        backpack, shoulder_bag, handbag = self.backpack, self.shoulder_bag, self.handbag
        if side_view:
            far, near = k["far"], ("R" if k["far"] == "L" else "L")
            arm(far)
            leg(far)
            if ident.bag == "backpack":
                backpack(False)
            leg(near)
            torso()
            if ident.bag == "shoulder":
                shoulder_bag()
            arm(near)
            if ident.bag == "handbag":
                handbag()
        else:
            leg("R")
            leg("L")
            torso()
            arm("R")
            arm("L")
            if ident.bag == "backpack":
                backpack(pose.view == "front")
            elif ident.bag == "shoulder":
                shoulder_bag()
            elif ident.bag == "handbag":
                handbag()
        # long hair over the back
        if ident.hair_style == "long" and pose.view == "back":
            hx, hy, hw, hh = k["head"]
            _poly(lab, [(hx - hw * 0.55, hy), (hx + hw * 0.55, hy), (hx + hw * 0.6, hy + hh * 1.3),
                        (hx - hw * 0.6, hy + hh * 1.3)], HAIR)


def draw_body(lab: np.ndarray, ident: Identity, k: dict, pose: Pose) -> None:
    """Draw the body parts (not the head) into the label map, in painter's order."""
    _BodyPainter(lab, ident, k, pose).draw()


# ---------------------------------------------------------------- one picture
@dataclass
class Rendered:
    """One synthetic picture: RGB uint8 [H, W, 3], person mask uint8 [H, W] (0/255),
    keypoints float32 [18, 2] as (y, x) in output pixels (-1 where missing)."""

    image: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray
    view: str
    occluded: bool


@dataclass
class _Frame:
    """One crop being drawn at the supersampled size: the picture (float RGB), body-part labels,
    the person's and the occluder's masks, and the keypoints (y, x) at the output size."""

    canvas: np.ndarray
    lab: np.ndarray
    person: np.ndarray
    occ: np.ndarray
    kp: np.ndarray


class Renderer:
    """Renders people into camera scenes at one output size (h, w).

    Scenes, light maps and tone curves are prepared once per camera; head sprites are
    cached per identity, view and facing. ``render`` takes a seeded Generator, so a
    picture depends only on its arguments.
    """

    def __init__(self, size: tuple[int, int], cameras: Sequence[CameraStyle], seed: int):
        self.h, self.w = int(size[0]), int(size[1])
        s = SUPERSAMPLE
        self.sh, self.sw = self.h * s, self.w * s
        self.cameras = {c.index: c for c in cameras}
        self.backgrounds, self.light, self.luts = {}, {}, {}
        xx = np.linspace(-1, 1, self.sw, dtype=np.float32)[None, :]
        yy = np.linspace(-1, 1, self.sh, dtype=np.float32)[:, None]
        for c in cameras:
            rng = np.random.default_rng([seed, 7919, c.index])
            strip = [render_scene(c.scene, (self.sh, 3 * self.sw), c.horizon, rng)]
            if SECOND_SCENE_WIDTH > 0:   # the part of the camera's view behind which people also walk
                second = CAMERA_PRESETS[(c.index + SECOND_SCENE_OFFSET - 1) % len(CAMERA_PRESETS)][0]
                strip.append(render_scene(second, (self.sh, int(SECOND_SCENE_WIDTH * self.sw)),
                                          c.horizon, rng))
            bg = np.concatenate(strip, 1)
            if BACKGROUND_CONTRAST != 1.0:  # flatter scenes: texture contrast around the mean colour
                mean = bg.reshape(-1, 3).mean(0)
                bg = mean + BACKGROUND_CONTRAST * (bg - mean)
            self.backgrounds[c.index] = bg.astype(np.float32)
            self.light[c.index] = (1 + 0.16 * c.light_side * xx - 0.06 * yy).astype(np.float32)[..., None]
            x = np.arange(256, dtype=np.float64) / 255.0
            lut = np.empty((256, 1, 3), np.uint8)
            for ch in range(3):
                y = np.clip(x * c.gains[ch] * c.exposure, 0, 1) ** c.gamma
                y = np.clip((y - 0.5) * c.contrast + 0.5, 0, 1)
                lut[:, 0, ch] = np.round(y * 255).astype(np.uint8)
            self.luts[c.index] = lut
        self._heads: dict = {}
        # sprites are drawn at about 1.5x the size a head has on the canvas (never above 1)
        head_px = 0.16 * 0.9 * self.sh
        self.sprite_scale = float(np.clip(1.5 * head_px / ((HEAD_BOX[1] - HEAD_BOX[0]) * SPRITE_H), 0.5, 1.0))

    # -- pieces
    def head(self, ident: Identity, view: str, facing: int) -> tuple[np.ndarray, dict]:
        """Cached head sprite (see :func:`render_head`); a left-facing profile is the
        mirror image of the right-facing one."""
        mirrored = view == "side" and facing < 0
        key = (ident, view, mirrored)
        if key not in self._heads:
            if len(self._heads) > 1024:
                self._heads.clear()
            if mirrored:
                sprite, kps = self.head(ident, view, 1)
                w = sprite.shape[1]
                swap = {"R": "L", "L": "R"}
                kps = {(swap[n[0]] + n[1:] if n[0] in swap else n): (y, w - 1 - x)
                       for n, (y, x) in kps.items()}
                self._heads[key] = (np.ascontiguousarray(sprite[:, ::-1]), kps)
            else:
                self._heads[key] = render_head(ident, view, 1, self.sprite_scale)
        return self._heads[key]

    def _colourise(self, canvas, lab, ident: Identity, k: dict, pose: Pose) -> None:
        u = pose.height
        ys, xs = np.nonzero(lab)
        if not len(ys):
            return
        labels = lab[ys, xs]
        colours = np.zeros((len(ys), 3), np.float32)
        table = {SKIN: ident.skin, LOWER: CLOTH[ident.lower], SHOE: ident.shoes, HAIR: ident.hair_colour,
                 BAG: CLOTH[ident.bag_colour], STRAP: tuple(0.6 * np.asarray(CLOTH[ident.bag_colour]))}
        for lbl, col in table.items():
            colours[labels == lbl] = col
        up = labels == UPPER
        if up.any():
            c1, c2 = np.asarray(CLOTH[ident.upper], np.float32), np.asarray(CLOTH[ident.upper2], np.float32)
            uy, ux = ys[up].astype(np.float32), xs[up].astype(np.float32)
            period = max(2.0, 0.035 * u)
            if ident.pattern == "hstripes":
                sel = (uy // period) % 2 == 1
            elif ident.pattern == "vstripes":
                sel = ((ux - pose.cx) // period) % 2 == 1
            elif ident.pattern == "checks":
                sel = ((uy // period) + ((ux - pose.cx) // period)) % 2 == 1
            elif ident.pattern == "twotone":
                sel = uy > (k["neck"][1] + k["Rhip"][1]) / 2
            elif ident.pattern == "logo" and pose.view == "front":
                cy = k["neck"][1] + 0.12 * u
                sel = (np.abs(uy - cy) < 0.045 * u) & (np.abs(ux - pose.cx) < 0.05 * u)
            else:
                sel = np.zeros(len(uy), bool)
            colours[up] = np.where(sel[:, None], c2, c1)
        # cylindrical shading around the body axis and a light gradient from the top
        d = (xs.astype(np.float32) - pose.cx) / (0.16 * u)
        shade = 1.0 - 0.22 * np.clip(d * d, 0, 1.5) - 0.1 * (ys - (pose.foot_y - u)) / u
        canvas[ys, xs] = colours * shade[:, None]

    def _paste_head(self, canvas, person, ident, k, pose) -> dict:
        sprite, kps = self.head(ident, pose.view, pose.facing)
        hx, hy, hw, hh = k["head"]
        bx = HEAD_BOX[3] - HEAD_BOX[2]
        by = HEAD_BOX[1] - HEAD_BOX[0]
        sw, sh = hw / bx, hh / by
        tw, th = max(2, int(round(sw))), max(2, int(round(sh)))
        small = cv2.resize(sprite, (tw, th), interpolation=cv2.INTER_AREA)
        x0 = int(round(hx - sw * (HEAD_BOX[2] + bx / 2)))
        y0 = int(round(hy - sh * (HEAD_BOX[0] + by / 2)))
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(self.sw, x0 + tw), min(self.sh, y0 + th)
        if cx1 > cx0 and cy1 > cy0:
            part = small[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            a = part[..., 3:4]
            region = canvas[cy0:cy1, cx0:cx1]
            region *= 1 - a
            region += a * part[..., :3]
            person[cy0:cy1, cx0:cx1] |= part[..., 3] > 0.5
        fx, fy = tw / sprite.shape[1], th / sprite.shape[0]
        return {n: (x0 + x * fx, y0 + y * fy) for n, (y, x) in kps.items()}

    def _occlude(self, canvas, occ, rng, k, pose) -> None:
        """Draw an occluder (pole, bollard, bin, car, bench) in front of the lower body."""
        u = pose.height
        kind = rng.choice(("pole", "bin", "car", "bench"))
        colour = rng.uniform(40, 200, 3)
        hx, hy, hw, hh = k["head"]
        neck_y = k["neck"][1]
        if kind == "pole":
            side = rng.choice((-1, 1))
            x = pose.cx + side * rng.uniform(0.08, 0.16) * u
            width = rng.uniform(0.03, 0.06) * u
            if abs(x - hx) < hw * 0.6 + width:   # keep the face free
                x = hx + side * (hw * 0.6 + width)
            cv2.rectangle(occ, (int(x - width), int(neck_y)), (int(x + width), self.sh), 1, -1)
        elif kind == "bin":
            x = pose.cx + rng.uniform(-0.12, 0.12) * u
            cv2.rectangle(occ, (int(x - 0.1 * u), int(pose.foot_y - rng.uniform(0.25, 0.4) * u)),
                          (int(x + 0.1 * u), self.sh), 1, -1)
        elif kind == "car":
            top = pose.foot_y - rng.uniform(0.3, 0.45) * u
            x0 = int(rng.uniform(-0.5, 0.2) * self.sw)
            cv2.rectangle(occ, (x0, int(top)), (x0 + int(self.sw * rng.uniform(0.6, 1.2)), self.sh), 1, -1)
            colour = rng.choice([(30, 30, 34), (180, 30, 30), (200, 200, 205), (40, 60, 120)]).astype(float)
        else:  # bench: a seat and a back rest
            top = pose.foot_y - 0.28 * u
            cv2.rectangle(occ, (0, int(top)), (self.sw, int(top + 0.05 * u)), 1, -1)
            cv2.rectangle(occ, (0, int(top + 0.12 * u)), (self.sw, int(top + 0.16 * u)), 1, -1)
        m = occ.astype(bool)
        canvas[m] = np.asarray(colour, np.float32) * (0.9 + 0.2 * rng.random((int(m.sum()), 1)))

    # -- the picture
    def render(self, ident: Identity | None, camera: int, rng: np.random.Generator, *,
               view: str | None = None, phase: float | None = None, occlude: bool | None = None,
               scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> Rendered:
        """Render ``ident`` in ``camera``'s scene; ``ident=None`` renders the empty scene.

        ``view``/``phase``/``occlude`` are drawn from ``rng`` (and the camera's view mix)
        when None. ``scale`` and ``shift`` (fractions of the crop) mis-frame the box, as
        for distractor and junk detections.
        """
        cam = self.cameras[camera]
        frame = self._frame(camera, rng)
        if view is None:
            view = VIEWS[int(rng.choice(3, p=np.asarray(cam.view_probs) / sum(cam.view_probs)))]
        facing = int(rng.choice((-1, 1)))
        phase = float(rng.uniform(0, 2 * np.pi)) if phase is None else phase
        if occlude is None:
            occlude = bool(rng.random() < 0.1)
        jit_h, jit_x, jit_y = rng.uniform(0.96, 1.03), rng.uniform(-0.07, 0.07), rng.normal(0, 0.02)
        if ident is not None:
            height = min(self.sh * cam.person_scale * ident.height * jit_h, 0.97 * self.sh) * scale
            pose = Pose(view=view, facing=facing, phase=phase,
                        cx=self.sw / 2 + (jit_x + shift[0]) * self.sw,
                        foot_y=self.sh / 2 + height / 2 + (jit_y + shift[1]) * self.sh, height=height)
            self._draw_person(frame, ident, pose, rng, occlude)
        else:
            occlude = False
        img, mask = self._finish(frame, camera, occlude)
        img = self._camera(img, cam, rng)
        return Rendered(image=img, mask=mask, keypoints=frame.kp, view=view if ident is not None else "none",
                        occluded=bool(occlude))

    def _frame(self, camera: int, rng: np.random.Generator) -> _Frame:
        """An empty frame: a random window of the camera's background, nothing drawn yet."""
        bg = self.backgrounds[camera]
        off = int(rng.integers(0, bg.shape[1] - self.sw))
        return _Frame(canvas=bg[:, off:off + self.sw].copy(), lab=np.zeros((self.sh, self.sw), np.uint8),
                      person=np.zeros((self.sh, self.sw), bool), occ=np.zeros((self.sh, self.sw), np.uint8),
                      kp=np.full((18, 2), -1.0, np.float32))

    def _draw_person(self, frame: _Frame, ident: Identity, pose: Pose, rng: np.random.Generator,
                     occlude: bool) -> None:
        """The person in ``pose`` into ``frame``: contact shadow, body, colours, head, keypoints,
        and an occluder in front when ``occlude``."""
        s = SUPERSAMPLE
        canvas, height = frame.canvas, pose.height
        k = skeleton(ident, pose)
        # contact shadow
        shadow = np.zeros((self.sh, self.sw), np.float32)
        cv2.ellipse(shadow, _pt((pose.cx, pose.foot_y)), (int(0.14 * height * 16), int(0.025 * height * 16)),
                    0, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
        canvas *= (1 - 0.35 * cv2.GaussianBlur(shadow, (0, 0), 2.0))[..., None]
        draw_body(frame.lab, ident, k, pose)
        self._colourise(canvas, frame.lab, ident, k, pose)
        frame.person |= frame.lab > 0
        face = self._paste_head(canvas, frame.person, ident, k, pose)
        for name, (x, y) in list(face.items()) + [(n, k[n]) for n in COCO18 if n in k]:
            frame.kp[KP[name]] = (y / s, x / s)
        if occlude:
            self._occlude(canvas, frame.occ, rng, k, pose)
            frame.person &= ~frame.occ.astype(bool)

    def _finish(self, frame: _Frame, camera: int, occlude: bool) -> tuple[np.ndarray, np.ndarray]:
        """The camera's light, down to the output size: ``(image float, mask uint8 0/255)``;
        keypoints outside the crop or under the occluder become missing (-1) in ``frame.kp``."""
        s = SUPERSAMPLE
        canvas = frame.canvas
        canvas *= self.light[camera]
        img = cv2.resize(canvas, (self.w, self.h), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(frame.person.astype(np.float32), (self.w, self.h), interpolation=cv2.INTER_AREA)
        mask = np.where(mask >= 0.5, 255, 0).astype(np.uint8)
        kp = frame.kp
        for i in range(18):
            y, x = kp[i]
            if y < 0 or x < 0 or y >= self.h or x >= self.w:
                kp[i] = -1
            elif occlude and frame.occ[min(int(y * s), self.sh - 1), min(int(x * s), self.sw - 1)]:
                kp[i] = -1
        return img, mask

    def _camera(self, img: np.ndarray, cam: CameraStyle, rng: np.random.Generator) -> np.ndarray:
        """Camera response: saturation, exposure jitter, colour cast and tone curve, blur, noise."""
        gray = img @ np.array([0.299, 0.587, 0.114], np.float32)
        img = gray[..., None] + cam.saturation * (img - gray[..., None])
        img *= rng.uniform(1 - EXPOSURE_DRIFT, 1 + EXPOSURE_DRIFT)
        if WHITE_BALANCE_DRIFT > 0:
            img *= rng.uniform(1 - WHITE_BALANCE_DRIFT, 1 + WHITE_BALANCE_DRIFT, 3).astype(np.float32)
        out = cv2.LUT(np.clip(img, 0, 255).astype(np.uint8), self.luts[cam.index])
        sigma = cam.blur * self.h / 128.0
        if sigma > 0.05:
            out = cv2.GaussianBlur(out, (0, 0), sigma)
        if cam.noise > 0:
            noise = rng.normal(0, cam.noise, out.shape).astype(np.float32)
            out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        return out
