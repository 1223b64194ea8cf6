"""Generate the synthetic example image pairs that ship with splice-tune.

Every image in ``examples/pairs/`` is drawn procedurally by this script with
numpy and Pillow only (no downloaded or copied images), so the examples are
owned by the project and can be regenerated bit-for-bit:

    python examples/make_examples.py

Each pair consists of a *structure* image (the layout the output should keep)
and an *appearance* image (the look the output should take on).  The two
images of a pair show semantically related scenes but differ in layout, size,
colours and textures, so transferring appearance between them is meaningful:

    cows       two/three black-and-white spotted cows on green grass
               <- one zebra-striped animal on a golden savanna
    fruits     a row of three dimpled oranges on a blue cloth
               <- a striped melon and a speckled red apple on a wooden table
    mountains  a grey-blue mountain ridge under a blue daytime sky
               <- a different, snow-capped ridge in sunset colours

Scenes are drawn at 2x resolution and downscaled with LANCZOS for mild
anti-aliasing.  All randomness uses fixed seeds, so output is deterministic.
The script also (re)writes ``examples/pairs.csv``.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "pairs")
CSV_PATH = os.path.join(HERE, "pairs.csv")
SS = 2  # supersampling factor (draw at 2x, downscale with LANCZOS)


# ---------------------------------------------------------------------------
# Generic helpers
# ---------------------------------------------------------------------------


def value_noise(h: int, w: int, cells: float, rng: np.random.Generator, aspect: float = 1.0) -> np.ndarray:
    """Smooth value noise in [0, 1] of shape (h, w).

    ``cells`` is the number of random lattice cells across the width;
    ``aspect`` > 1 stretches features vertically.
    """
    cw = max(2, int(round(cells)))
    ch = max(2, int(round(cells * h / w / aspect)))
    grid = rng.random((ch + 3, cw + 3)).astype(np.float32)
    img = Image.fromarray(grid, mode="F")
    # resize the padded grid then crop, so borders are not clamped
    big_w = int(round(w * (cw + 3) / cw))
    big_h = int(round(h * (ch + 3) / ch))
    up = np.asarray(img.resize((big_w, big_h), Image.BICUBIC))
    ox = (big_w - w) // 2
    oy = (big_h - h) // 2
    return np.clip(up[oy : oy + h, ox : ox + w], 0.0, 1.0)


def fbm(h: int, w: int, cells: float, rng: np.random.Generator, octaves: int = 4, aspect: float = 1.0) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1]."""
    total = np.zeros((h, w), np.float32)
    amp, norm = 1.0, 0.0
    for i in range(octaves):
        total += amp * value_noise(h, w, cells * 2**i, rng, aspect)
        norm += amp
        amp *= 0.5
    total /= norm
    lo, hi = total.min(), total.max()
    return (total - lo) / (hi - lo + 1e-8)


def rgb(*c) -> np.ndarray:
    return np.array(c, np.float32) / 255.0


def lerp(a, b, t):
    t = np.asarray(t, np.float32)
    if t.ndim == 2:
        t = t[..., None]
    return a * (1.0 - t) + b * t


def vertical_gradient(h: int, w: int, stops) -> np.ndarray:
    """Vertical colour gradient; ``stops`` is a list of (position, rgb)."""
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)
    pos = np.array([p for p, _ in stops], np.float32)
    cols = np.stack([c for _, c in stops])
    out = np.stack([np.interp(ys, pos, cols[:, k]) for k in range(3)], -1)
    return np.broadcast_to(out[:, None, :], (h, w, 3)).copy()


class Mask:
    """A greyscale mask drawn with PIL, returned as float array in [0, 1]."""

    def __init__(self, w: int, h: int):
        self.im = Image.new("L", (w, h), 0)
        self.d = ImageDraw.Draw(self.im)

    def arr(self, blur: float = 0.0) -> np.ndarray:
        im = self.im
        if blur:
            im = im.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(im, np.float32) / 255.0


def paste(canvas: np.ndarray, tex: np.ndarray, mask: np.ndarray) -> None:
    """Alpha-composite ``tex`` over ``canvas`` in place using ``mask``."""
    m = mask[..., None]
    canvas *= 1.0 - m
    canvas += tex * m


def ellipse_shade(h, w, cx, cy, rx, ry, light=(-0.4, -0.6)) -> np.ndarray:
    """Sphere-like shading factor for an ellipse (about 0.55 .. 1.15)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - cx) / rx
    v = (yy - cy) / ry
    r2 = np.clip(u * u + v * v, 0.0, 1.0)
    nz = np.sqrt(1.0 - r2)
    lx, ly = light
    lz = np.sqrt(max(1e-6, 1.0 - lx * lx - ly * ly))
    diffuse = np.clip(u * lx + v * ly + nz * lz, 0.0, 1.0)
    return 0.55 + 0.6 * diffuse


def finish(canvas: np.ndarray, size) -> Image.Image:
    """Convert a 2x float canvas to a LANCZOS-downscaled RGB image."""
    arr = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB").resize(size, Image.LANCZOS)


# ---------------------------------------------------------------------------
# Pair 1: cows (structure) <- zebra (appearance)
# ---------------------------------------------------------------------------


def draw_quadruped(w, h, x, y, s, facing, body_tex_fn, head_col, canvas, long_neck=False):
    """Draw a blobby four-legged animal standing with its feet at ``y``.

    ``s`` is the body length in (2x) pixels, ``facing`` is +1 (right) or -1.
    ``body_tex_fn(part)`` returns an (h, w, 3) texture for 'legs', 'body',
    'head' parts.
    """
    bw, bh = s, s * 0.48
    leg_len = s * 0.38
    body_cy = y - leg_len - bh * 0.35
    cx = x

    # shadow on the ground
    sh = Mask(w, h)
    sh.d.ellipse([cx - bw * 0.6, y - s * 0.06, cx + bw * 0.6, y + s * 0.06], fill=255)
    canvas *= 1.0 - 0.35 * sh.arr(blur=s * 0.04)[..., None]

    # legs (far legs slightly darker, drawn first)
    legs = Mask(w, h)
    far = Mask(w, h)
    lw = s * 0.085
    for k, frac in enumerate((-0.36, -0.22, 0.22, 0.36)):
        lx = cx + frac * bw
        target = far if k in (1, 3) else legs
        target.d.rounded_rectangle([lx - lw / 2, body_cy, lx + lw / 2, y], radius=lw * 0.4, fill=255)
        # hoof
        target.d.rectangle([lx - lw / 2, y - lw * 0.7, lx + lw / 2, y], fill=255)
    leg_tex = body_tex_fn("legs")
    paste(canvas, leg_tex * 0.8, far.arr())
    paste(canvas, leg_tex, legs.arr())
    hooves = Mask(w, h)
    for frac in (-0.36, -0.22, 0.22, 0.36):
        lx = cx + frac * bw
        hooves.d.rectangle([lx - lw / 2, y - lw * 0.7, lx + lw / 2, y], fill=255)
    paste(canvas, np.broadcast_to(rgb(40, 34, 30), canvas.shape), hooves.arr())

    # tail
    tail = Mask(w, h)
    tx = cx - facing * bw * 0.49
    tail.d.line(
        [tx, body_cy - bh * 0.2, tx - facing * s * 0.08, body_cy + bh * 0.7], fill=255, width=max(2, int(s * 0.025))
    )
    tail.d.ellipse(
        [tx - facing * s * 0.08 - s * 0.03, body_cy + bh * 0.6, tx - facing * s * 0.08 + s * 0.03, body_cy + bh * 0.95],
        fill=255,
    )
    paste(canvas, np.broadcast_to(rgb(35, 30, 28), canvas.shape), tail.arr())

    # body
    body = Mask(w, h)
    body.d.ellipse([cx - bw / 2, body_cy - bh / 2, cx + bw / 2, body_cy + bh / 2], fill=255)
    shade = ellipse_shade(h, w, cx, body_cy, bw / 2, bh / 2)
    paste(canvas, body_tex_fn("body") * shade[..., None], body.arr())

    # neck + head
    head = Mask(w, h)
    nx = cx + facing * bw * 0.42
    if long_neck:
        hx = cx + facing * bw * 0.62
        hy = body_cy - bh * 1.05
        head.d.polygon(
            [
                (nx - facing * s * 0.12, body_cy - bh * 0.35),
                (nx + facing * s * 0.06, body_cy + bh * 0.05),
                (hx + facing * s * 0.05, hy + s * 0.05),
                (hx - facing * s * 0.06, hy - s * 0.05),
            ],
            fill=255,
        )
        hrx, hry = s * 0.2, s * 0.085
    else:
        hx = cx + facing * bw * 0.56
        hy = body_cy - bh * 0.35
        head.d.polygon(
            [
                (nx - facing * s * 0.1, body_cy - bh * 0.3),
                (nx, body_cy + bh * 0.25),
                (hx, hy + s * 0.06),
                (hx, hy - s * 0.06),
            ],
            fill=255,
        )
        hrx, hry = s * 0.13, s * 0.11
    head.d.ellipse([hx - hrx, hy - hry, hx + hrx, hy + hry], fill=255)
    # ears
    ex = hx - facing * hrx * 0.5
    head.d.polygon(
        [(ex - s * 0.03, hy - hry * 0.6), (ex - facing * s * 0.09, hy - hry * 1.5), (ex + s * 0.03, hy - hry * 0.8)],
        fill=255,
    )
    hshade = ellipse_shade(h, w, hx, hy, hrx * 1.3, hry * 1.6)
    paste(canvas, body_tex_fn("head") * hshade[..., None], head.arr())
    if long_neck:  # short upright mane along the top of the neck
        mane = Mask(w, h)
        mane.d.line(
            [(nx - facing * s * 0.12, body_cy - bh * 0.4), (hx - facing * s * 0.07, hy - s * 0.07)],
            fill=255,
            width=max(2, int(s * 0.04)),
        )
        paste(canvas, np.broadcast_to(rgb(30, 26, 26), canvas.shape), mane.arr(blur=0.6))

    # snout + eye
    sn = Mask(w, h)
    sx = hx + facing * hrx * 0.72
    sn.d.ellipse([sx - hrx * 0.42, hy - hry * 0.45, sx + hrx * 0.42, hy + hry * 0.75], fill=255)
    paste(canvas, np.broadcast_to(head_col, canvas.shape), sn.arr())
    eye = Mask(w, h)
    ey_x = hx + facing * hrx * 0.1
    er = max(1.5, s * 0.018)
    eye.d.ellipse([ey_x - er, hy - hry * 0.35 - er, ey_x + er, hy - hry * 0.35 + er], fill=255)
    paste(canvas, np.broadcast_to(rgb(15, 12, 10), canvas.shape), eye.arr())


def cows_structure(size=(192, 128)) -> Image.Image:
    rng = np.random.default_rng(101)
    w, h = size[0] * SS, size[1] * SS
    horizon = int(h * 0.42)
    canvas = vertical_gradient(
        h,
        w,
        [(0.0, rgb(92, 150, 225)), (0.42, rgb(190, 220, 245)), (0.4201, rgb(96, 160, 64)), (1.0, rgb(58, 125, 40))],
    )
    # a couple of soft clouds
    cl = Mask(w, h)
    for x, y, r in ((0.2, 0.12, 0.07), (0.27, 0.1, 0.09), (0.34, 0.13, 0.06), (0.72, 0.2, 0.06), (0.78, 0.18, 0.08)):
        cl.d.ellipse([w * x - w * r, h * y - w * r * 0.45, w * x + w * r, h * y + w * r * 0.45], fill=255)
    paste(canvas, np.broadcast_to(rgb(250, 252, 255), canvas.shape), cl.arr(blur=4) * 0.9)
    # grass texture
    g = fbm(h, w, 10, rng, 4)
    grass = np.zeros_like(canvas)
    grass[:] = lerp(rgb(70, 135, 45), rgb(125, 185, 70), g)
    ground = np.zeros((h, w), np.float32)
    ground[horizon:] = 1.0
    paste(canvas, grass * 0.6 + canvas * 0.4, ground)

    spots = fbm(h, w, 20, rng, 3)
    cow_white = rgb(246, 244, 236)
    cow_black = rgb(28, 26, 26)

    def cow_tex(part):
        t = np.clip((spots - 0.55) * 14.0, 0.0, 1.0)
        return lerp(cow_white[None, None], cow_black[None, None], t)

    # three cows at different depths, facing different ways
    for x, y, s, f in ((0.22, 0.78, 0.27, 1), (0.58, 0.66, 0.21, -1), (0.8, 0.93, 0.29, -1)):
        draw_quadruped(w, h, w * x, h * y, w * s, f, cow_tex, rgb(232, 160, 160), canvas)
    return finish(canvas, size)


def cows_appearance(size=(176, 128)) -> Image.Image:
    rng = np.random.default_rng(202)
    w, h = size[0] * SS, size[1] * SS
    horizon = int(h * 0.5)
    canvas = vertical_gradient(
        h,
        w,
        [(0.0, rgb(238, 196, 120)), (0.5, rgb(252, 236, 190)), (0.5001, rgb(214, 170, 84)), (1.0, rgb(170, 120, 50))],
    )
    # sun haze
    sun = Mask(w, h)
    sun.d.ellipse([w * 0.78, h * 0.12, w * 0.9, h * 0.12 + w * 0.12], fill=255)
    paste(canvas, np.broadcast_to(rgb(255, 248, 220), canvas.shape), sun.arr(blur=3))
    # dry grass
    g = fbm(h, w, 14, rng, 4, aspect=0.4)
    dry = lerp(rgb(160, 112, 45), rgb(232, 195, 110), g)
    ground = np.zeros((h, w), np.float32)
    ground[horizon:] = 1.0
    paste(canvas, dry * 0.55 + canvas * 0.45, ground)
    # flat-topped acacia tree on the horizon
    tree = Mask(w, h)
    tx = w * 0.14
    top = horizon - h * 0.22
    tree.d.polygon([(tx - 3, horizon + 6), (tx + 3, horizon + 6), (tx + 2, top), (tx - 2, top)], fill=255)
    tree.d.line([tx, horizon - h * 0.1, tx + w * 0.07, horizon - h * 0.25], fill=255, width=4)
    tree.d.ellipse([tx - w * 0.13, horizon - h * 0.33, tx + w * 0.14, horizon - h * 0.22], fill=255)
    paste(canvas, np.broadcast_to(rgb(70, 72, 40), canvas.shape), tree.arr())

    warp = fbm(h, w, 6, rng, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    zebra_white = rgb(245, 242, 232)
    zebra_black = rgb(20, 18, 20)

    def zebra_tex(part):
        if part == "legs":
            coord = yy
        elif part == "head":
            coord = (xx * 0.6 + yy) * 1.6
        else:
            coord = xx + 0.25 * yy
        phase = coord / (w * 0.03) + warp * 6.0
        t = np.clip(np.sin(phase * np.pi) * 3.0 + 0.5, 0.0, 1.0)
        return lerp(zebra_white[None, None], zebra_black[None, None], t)

    draw_quadruped(w, h, w * 0.5, h * 0.9, w * 0.5, 1, zebra_tex, rgb(40, 36, 36), canvas, long_neck=True)
    return finish(canvas, size)


# ---------------------------------------------------------------------------
# Pair 2: fruits
# ---------------------------------------------------------------------------


def draw_fruit(canvas, w, h, cx, cy, r, tex, stem=True, leaf=True, squash=1.0):
    rx, ry = r, r * squash
    sh = Mask(w, h)
    sh.d.ellipse([cx - rx * 1.05, cy + ry * 0.75, cx + rx * 1.25, cy + ry * 1.12], fill=255)
    canvas *= 1.0 - 0.4 * sh.arr(blur=r * 0.12)[..., None]
    m = Mask(w, h)
    m.d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    shade = ellipse_shade(h, w, cx, cy, rx, ry)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hl = np.exp(-(((xx - (cx - rx * 0.38)) / (rx * 0.18)) ** 2 + ((yy - (cy - ry * 0.42)) / (ry * 0.13)) ** 2))
    col = tex * shade[..., None] + 0.45 * hl[..., None]
    paste(canvas, col, m.arr())
    if stem:
        s = Mask(w, h)
        s.d.line([cx, cy - ry * 0.85, cx + r * 0.08, cy - ry * 1.2], fill=255, width=max(3, int(r * 0.09)))
        paste(canvas, np.broadcast_to(rgb(95, 62, 30), canvas.shape), s.arr())
    if leaf:
        lf = Mask(w, h)
        lx, ly = cx + r * 0.1, cy - ry * 1.05
        lf.d.polygon(
            [(lx, ly), (lx + r * 0.25, ly - r * 0.22), (lx + r * 0.55, ly - r * 0.2), (lx + r * 0.3, ly + r * 0.02)],
            fill=255,
        )
        paste(canvas, np.broadcast_to(rgb(60, 140, 50), canvas.shape), lf.arr(blur=0.7))


def fruits_structure(size=(192, 128)) -> Image.Image:
    rng = np.random.default_rng(303)
    w, h = size[0] * SS, size[1] * SS
    table_y = int(h * 0.58)
    canvas = vertical_gradient(
        h,
        w,
        [
            (0.0, rgb(240, 232, 210)),
            (0.58, rgb(222, 212, 186)),
            (0.5801, rgb(150, 185, 220)),
            (1.0, rgb(110, 150, 200)),
        ],
    )
    # subtle cloth weave on the table
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    weave = (np.sin(xx * 0.5) * np.sin(yy * 0.5)) * 0.03
    cloth = np.zeros((h, w), np.float32)
    cloth[table_y:] = 1.0
    canvas += (weave * cloth)[..., None]
    # orange peel: orange with fine dimples
    dimple = value_noise(h, w, w / 5.0, rng)
    blotch = fbm(h, w, 6, rng, 2)
    orange = lerp(rgb(240, 135, 20), rgb(255, 170, 45), blotch)
    orange = orange * (0.92 + 0.12 * dimple[..., None])
    r = w * 0.13
    for i, cx in enumerate((0.2, 0.5, 0.8)):
        draw_fruit(canvas, w, h, w * cx, h * 0.6 - (i % 2) * 2, r, orange, stem=True, leaf=(i != 1), squash=0.95)
    return finish(canvas, size)


def fruits_appearance(size=(144, 144)) -> Image.Image:
    rng = np.random.default_rng(404)
    w, h = size[0] * SS, size[1] * SS
    canvas = vertical_gradient(
        h, w, [(0.0, rgb(40, 70, 55)), (0.55, rgb(60, 95, 72)), (0.5501, rgb(120, 74, 40)), (1.0, rgb(88, 50, 25))]
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # wood grain on the table
    gwarp = fbm(h, w, 4, rng, 3, aspect=0.25)
    grain = 0.5 + 0.5 * np.sin(yy * 0.35 + gwarp * 14.0)
    wood = lerp(rgb(95, 55, 28), rgb(150, 96, 52), grain)
    table = np.zeros((h, w), np.float32)
    table[int(h * 0.55) :] = 1.0
    paste(canvas, wood, table)

    # melon: light green with wavy dark green stripes running top-to-bottom
    mx, my, mr = w * 0.36, h * 0.55, w * 0.3
    mwarp = fbm(h, w, 8, rng, 3)
    ang = np.arctan2(xx - mx, np.maximum(mr * 0.3, mr - np.abs(yy - my)))
    stripes = np.sin(ang * 9.0 + mwarp * 5.0)
    t = np.clip(stripes * 2.0 + 0.3, 0.0, 1.0)
    melon = lerp(rgb(170, 210, 110), rgb(30, 90, 35), t)
    draw_fruit(canvas, w, h, mx, my, mr, melon, stem=True, leaf=False, squash=0.9)

    # apple: deep red with small yellow speckles
    ax, ay, ar = w * 0.74, h * 0.72, w * 0.17
    speck = value_noise(h, w, w / 3.0, rng)
    flush = fbm(h, w, 5, rng, 3)
    apple = lerp(rgb(150, 15, 25), rgb(215, 45, 35), flush)
    dots = np.clip((speck - 0.82) * 8.0, 0, 1)
    apple = lerp(apple, rgb(245, 215, 120), dots)
    draw_fruit(canvas, w, h, ax, ay, ar, apple, stem=True, leaf=True, squash=0.95)
    return finish(canvas, size)


# ---------------------------------------------------------------------------
# Pair 3: mountains
# ---------------------------------------------------------------------------


def ridge_line(w, peaks, base, rough, rng, cells=12):
    """Ridge height profile (y coordinate per column, in 2x pixels).

    Returns ``(ridge, light)`` where ``light`` in 0..1 per column says how
    much the slope faces left (1) or right (0), computed from the smooth
    peak profile only so that shading does not band with the roughness.
    """
    xs = np.arange(w, dtype=np.float32)
    y = np.full(w, base, np.float32)
    for px, py, pw in peaks:
        # pointed-ish peaks: laplacian-like bumps
        y -= py * np.exp(-np.abs(xs - px) / pw) ** 1.2
    light = (0.5 + 0.5 * np.tanh(-np.gradient(y) * 2.0)).astype(np.float32)
    n = fbm(1, w, cells, rng, 5)[0] - 0.5
    return y + n * rough, light


def ridge_mask(h, w, ridge):
    yy = np.arange(h, dtype=np.float32)[:, None]
    return np.clip(yy - ridge[None, :] + 0.5, 0.0, 1.0)


def mountains_structure(size=(160, 160)) -> Image.Image:
    rng = np.random.default_rng(505)
    w, h = size[0] * SS, size[1] * SS
    canvas = vertical_gradient(h, w, [(0.0, rgb(55, 115, 205)), (0.7, rgb(175, 210, 240)), (1.0, rgb(200, 225, 245))])
    cl = Mask(w, h)
    for x, y, r in ((0.15, 0.12, 0.08), (0.22, 0.1, 0.1), (0.3, 0.13, 0.07), (0.8, 0.22, 0.07), (0.86, 0.2, 0.09)):
        cl.d.ellipse([w * x - w * r, h * y - w * r * 0.4, w * x + w * r, h * y + w * r * 0.4], fill=255)
    paste(canvas, np.broadcast_to(rgb(252, 252, 255), canvas.shape), cl.arr(blur=5) * 0.85)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # main ridge: one dominant peak left of centre, a shoulder on the right
    ridge, left_lit = ridge_line(
        w, [(w * 0.4, h * 0.45, w * 0.22), (w * 0.78, h * 0.22, w * 0.12)], h * 0.78, h * 0.1, rng, cells=20
    )
    rock_n = fbm(h, w, 10, rng, 4)
    gully = fbm(h, w, 18, rng, 3, aspect=3.0)
    lit = left_lit[None, :] * (0.7 + 0.6 * (gully - 0.5))  # left faces lit
    rock = lerp(rgb(75, 88, 115), rgb(140, 152, 178), np.clip(rock_n * 0.4 + lit * 0.6, 0, 1))
    haze = np.clip((yy / h - 0.45) * 1.2, 0, 0.35)  # aerial perspective
    rock = lerp(rock, rgb(175, 200, 225), haze)
    paste(canvas, rock, ridge_mask(h, w, ridge))
    # green foothills in front
    hills, _ = ridge_line(
        w, [(w * 0.15, h * 0.08, w * 0.3), (w * 0.7, h * 0.06, w * 0.3)], h * 0.86, h * 0.03, rng, cells=5
    )
    gn = fbm(h, w, 12, rng, 3)
    meadow = lerp(rgb(60, 120, 50), rgb(105, 165, 70), gn)
    paste(canvas, meadow, ridge_mask(h, w, hills))
    return finish(canvas, size)


def mountains_appearance(size=(176, 128)) -> Image.Image:
    rng = np.random.default_rng(606)
    w, h = size[0] * SS, size[1] * SS
    canvas = vertical_gradient(
        h,
        w,
        [
            (0.0, rgb(60, 30, 95)),
            (0.3, rgb(170, 60, 120)),
            (0.55, rgb(245, 125, 70)),
            (0.75, rgb(255, 200, 110)),
            (1.0, rgb(255, 215, 140)),
        ],
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # setting sun between the peaks
    sx, sy, sr = w * 0.5, h * 0.5, w * 0.07
    d = np.sqrt((xx - sx) ** 2 + (yy - sy) ** 2)
    glow = np.exp(-((d / (sr * 3.0)) ** 2)) * 0.5
    canvas += glow[..., None] * rgb(255, 220, 150)
    paste(canvas, np.broadcast_to(rgb(255, 240, 200), canvas.shape), np.clip(sr - d + 0.5, 0, 1))

    # twin-peaked ridge (different silhouette from the structure image)
    ridge, left_lit = ridge_line(
        w,
        [(w * 0.22, h * 0.42, w * 0.11), (w * 0.72, h * 0.5, w * 0.13), (w * 0.47, h * 0.12, w * 0.2)],
        h * 0.82,
        h * 0.08,
        rng,
        cells=24,
    )
    rock_n = fbm(h, w, 12, rng, 4)
    streak = fbm(h, w, 22, rng, 3, aspect=4.0)
    lit = (1.0 - left_lit[None, :]) * (0.7 + 0.6 * (streak - 0.5))
    lit = np.clip(lit, 0, 1)  # right-facing slopes catch the sunset
    rock = lerp(rgb(55, 35, 70), rgb(125, 68, 82), rock_n * 0.5 + lit * 0.5)
    # snow: streaky (vertically stretched) noise above a noisy snow line
    snowline = h * 0.66 + (streak - 0.5) * h * 0.25
    depth = yy - ridge[None, :]
    snow_t = np.clip((snowline - yy) / (h * 0.03), 0, 1)
    snow_t *= np.clip(0.6 + (streak - 0.5) * 2.5 - depth / (h * 0.5), 0, 1)
    snow_col = lerp(rgb(200, 150, 200), rgb(255, 225, 215), np.clip(lit * 0.7 + streak * 0.3, 0, 1))
    mountain = lerp(rock, snow_col, snow_t)
    paste(canvas, mountain, ridge_mask(h, w, ridge))
    # dark foreground ridge
    fg, _ = ridge_line(w, [(w * 0.85, h * 0.1, w * 0.25)], h * 0.9, h * 0.04, rng, cells=8)
    paste(canvas, np.broadcast_to(rgb(40, 22, 45), canvas.shape), ridge_mask(h, w, fg))
    return finish(canvas, size)


# ---------------------------------------------------------------------------

PAIRS = {
    "cows": (cows_structure, cows_appearance),
    "fruits": (fruits_structure, fruits_appearance),
    "mountains": (mountains_structure, mountains_appearance),
}


def main() -> None:
    os.makedirs(OUT_DIR, exist_ok=True)
    rows = []
    for name, (make_s, make_a) in PAIRS.items():
        paths = []
        for role, fn in (("structure", make_s), ("appearance", make_a)):
            rel = f"pairs/{name}_{role}.png"
            img = fn()
            img.save(os.path.join(HERE, rel), optimize=True)
            paths.append(rel)
            print(f"wrote examples/{rel}  {img.size[0]}x{img.size[1]}")
        rows.append([name, *paths])
    with open(CSV_PATH, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["pair", "structure", "appearance"])
        writer.writerows(rows)
    print(f"wrote examples/pairs.csv  ({len(rows)} pairs)")


if __name__ == "__main__":
    main()
