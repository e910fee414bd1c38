"""Generate a small, deterministic synthetic "shapes" dataset for smoke-training localattn models.

Coloured shapes (:data:`CLASSES`) are drawn on textured backgrounds (smooth noise, stripes,
checkerboards, gradients and blends of those) and written in the formats the OpenMMLab 2.x
datasets read, so the same configs that train on COCO / ADE20K / ImageNet can be pointed at it::

    <out-dir>/
      meta.json                          class names, counts, seed, image size, generator version
      det/train/000000.png ...           mmdet ``CocoDataset`` images
      det/val/...
      det/annotations/instances_{train,val}.json   COCO instances (polygons of the VISIBLE region)
      seg/img_dir/{train,val}/000000.png  mmseg ``BaseSegDataset`` (ADE-like), same scenes as det
      seg/ann_dir/{train,val}/000000.png  uint8 label maps: 0 = background, k = CLASSES[k - 1]
      cls/{train,val}/<class>/000000.png  mmpretrain ``CustomDataset``, one dominant shape each

Config notes: det uses ``metainfo=dict(classes=CLASSES)`` (COCO category ids 1..K in that order);
seg uses ``SEG_CLASSES`` (with 'background'), ``reduce_zero_label=False``, ``img_suffix='.png'``;
cls uses ``CLASSES`` -- already sorted alphabetically, which is the label order ``CustomDataset``
derives from the folder names. Polygons use the COCO pixel-corner convention (pixel ``(x, y)``
covers ``[x, x+1] x [y, y+1]``), traced from the label mask and lightly simplified.

Every image is drawn from its own RNG stream seeded by ``(seed, task, split, index)``, so the output
is byte-identical for identical arguments, and det/seg always share the same scenes. Only numpy,
Pillow and the standard library are needed.

Usage::

    python tools/dataset_converters/generate_synthetic.py --out-dir data/synthetic
    python tools/dataset_converters/generate_synthetic.py --out-dir data/synthetic \\
        --num-train 48 --num-val 16 --size 128 --seed 0 --tasks det seg cls [--force]
"""
import argparse
import colorsys
import json
import os
import os.path as osp
import shutil
import time

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = '1.0'
CLASSES = ('circle', 'square', 'star', 'triangle')  # alphabetical == mmpretrain folder order
SEG_CLASSES = ('background', ) + CLASSES
TASKS = ('det', 'seg', 'cls')
SPLITS = ('train', 'val')

MIN_AREA = 40          # px; smallest visible area an instance may keep
MIN_VISIBLE = 0.4      # an instance must keep this fraction of its area when occluded
MAX_HOLES = 0.02       # occluders may not punch holes larger than this fraction into a region
SIMPLIFY_EPS = 0.7     # Douglas-Peucker tolerance (px) applied to traced pixel boundaries
_STREAM = {'scene': 1, 'cls': 2, 'train': 0, 'val': 1}


# ----------------------------------------------------------------------------- drawing helpers
def _rand_color(rng, sat, val):
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _texture(rng, h, w, kind=None):
    """Return an ``(h, w, 3)`` float32 background: noise, stripes, checker, gradient or a mix."""
    kind = int(rng.integers(5)) if kind is None else kind
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    c1, c2 = (_rand_color(rng, (0.0, 0.6), (0.15, 0.95)) for _ in range(2))
    if kind == 0:  # smooth noise: a coarse random grid upsampled bicubically
        gh, gw = rng.integers(2, 9, size=2)
        grid = np.clip(c1 + rng.normal(0, 45, (gh, gw, 3)), 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32)
    if kind == 1:  # soft stripes
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(5, 24))
    elif kind == 2:  # rotated checkerboard
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        cell = rng.uniform(6, 28)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == 3:  # linear gradient
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    else:  # blend of two other textures
        a, b = (_texture(rng, h, w, int(rng.integers(4))) for _ in range(2))
        alpha = rng.uniform(0.3, 0.7)
        return alpha * a + (1 - alpha) * b
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _shape_mask(name, cx, cy, r, angle, h, w):
    """Rasterise one shape (bool ``(h, w)``); ``r`` is roughly the shape's radius in pixels."""
    canvas = Image.new('L', (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if name == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        if name == 'square':
            radii, angles = [r * 1.2] * 4, angle + np.pi / 4 + np.arange(4) * np.pi / 2
        elif name == 'triangle':
            radii, angles = [r * 1.3] * 3, angle + np.arange(3) * 2 * np.pi / 3
        elif name == 'star':
            radii, angles = [r * 1.3, r * 0.55] * 5, angle + np.arange(10) * np.pi / 5
        else:
            raise ValueError(f'unknown shape {name!r}')
        draw.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)],
                     fill=1)
    return np.asarray(canvas, dtype=bool)


def _paint(img, rng, mask, cx, cy, r):
    """Paint a shape in a colour that contrasts with the background below it, with soft shading."""
    below = img[mask].mean(axis=0)
    for _ in range(10):
        color = _rand_color(rng, (0.45, 1.0), (0.5, 1.0))
        if np.linalg.norm(color - below) > 80:
            break
    ys, xs = np.nonzero(mask)
    phi = rng.uniform(0, 2 * np.pi)
    shade = 1 + 0.15 * ((xs - cx) * np.cos(phi) + (ys - cy) * np.sin(phi)) / max(r, 1.0)
    img[ys, xs] = np.clip(color[None] * shade[:, None], 0, 255)


def _finish(img, rng):
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- mask -> polygons
_SIDES = (  # (neighbour dy, dx, edge start corner, edge end corner); foreground on the right
    (-1, 0, (0, 0), (1, 0)), (0, 1, (1, 0), (1, 1)),
    (1, 0, (1, 1), (0, 1)), (0, -1, (0, 1), (0, 0)))


def trace_boundaries(mask):
    """Trace the pixel-edge boundaries of a binary mask (4-connectivity).

    Returns a list of ``(loop, signed_area)``; ``loop`` is an ``(N, 2)`` int array of ``(x, y)``
    pixel corners. Outer boundaries have positive area, hole boundaries negative.
    """
    m = np.pad(np.asarray(mask, bool), 1)
    inner = m[1:-1, 1:-1]
    edges = {}  # start corner -> [(end corner, owning pixel)]
    for dy, dx, (sx, sy), (ex, ey) in _SIDES:
        nb = m[1 + dy:m.shape[0] - 1 + dy, 1 + dx:m.shape[1] - 1 + dx]
        for y, x in zip(*(a.tolist() for a in np.nonzero(inner & ~nb))):
            edges.setdefault((x + sx, y + sy), []).append(((x + ex, y + ey), (x, y)))
    loops = []
    while edges:
        start = next((v for v, outs in edges.items() if len(outs) == 1), next(iter(edges)))
        cur, pix, pts = start, None, [start]
        while True:
            corner, outs = cur, edges[cur]
            # at a pinch corner keep following the pixel we came along (separates diagonal blobs)
            k = next((i for i, (_, p) in enumerate(outs) if p == pix), 0)
            cur, pix = outs.pop(k)
            if not outs:
                del edges[corner]
            if cur == start:
                break
            pts.append(cur)
        loop = np.array(pts, np.int64)
        loops.append((loop, _area(loop)))
    return loops


def _area(poly):
    x, y = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _douglas_peucker(pts, eps):
    keep = np.zeros(len(pts), bool)
    keep[[0, -1]] = True
    stack = [(0, len(pts) - 1)]
    while stack:
        a, b = stack.pop()
        if b <= a + 1:
            continue
        seg, rel = pts[b] - pts[a], pts[a + 1:b] - pts[a]
        norm = np.hypot(*seg)
        dist = (np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm if norm > 0
                else np.hypot(rel[:, 0], rel[:, 1]))
        i = int(np.argmax(dist))
        if dist[i] > eps:
            keep[a + 1 + i] = True
            stack += [(a, a + 1 + i), (a + 1 + i, b)]
    return pts[keep]


def simplify_loop(loop, eps=SIMPLIFY_EPS):
    """Drop collinear corners, then Douglas-Peucker; falls back to the exact loop if it degrades."""
    d_in, d_out = loop - np.roll(loop, 1, axis=0), np.roll(loop, -1, axis=0) - loop
    exact = loop[(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]) != 0].astype(np.float64)
    if eps <= 0 or len(exact) <= 4:
        return exact
    far = int(np.argmax(np.hypot(*(exact - exact[0]).T)))
    first = _douglas_peucker(exact[:far + 1], eps)
    second = _douglas_peucker(np.vstack([exact[far:], exact[:1]]), eps)
    simple = np.vstack([first[:-1], second[:-1]])
    ok = len(simple) >= 3 and abs(_area(simple) - _area(exact)) <= 0.1 * abs(_area(exact))
    return simple if ok else exact


def mask_to_annotation(mask):
    """COCO ``bbox``, ``area`` and polygon ``segmentation`` of a binary (visible) mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
    polys = [simplify_loop(loop) for loop, area in trace_boundaries(mask) if area > 0]
    segm = [[float(v) for v in p.reshape(-1)] for p in polys]
    return dict(bbox=bbox, area=float(len(xs)), segmentation=segm)


# ----------------------------------------------------------------------------- scenes
def _holes(mask):
    return -sum(a for _, a in trace_boundaries(mask) if a < 0)


def make_scene(rng, h, w, max_instances=4):
    """Draw 1-``max_instances`` shapes; later ones occlude earlier ones (within limits).

    Returns ``(image uint8 (h, w, 3), label map uint8 (h, w), [(label, visible mask), ...])``;
    labels are 1-based indices into :data:`CLASSES`.
    """
    img = _texture(rng, h, w)
    inst = np.zeros((h, w), np.int32)
    labels, full_areas = [], []
    dim = min(h, w)
    for _ in range(int(rng.integers(1, max_instances + 1))):
        for _attempt in range(25):
            label = int(rng.integers(len(CLASSES))) + 1
            r = rng.uniform(0.09, 0.24) * dim
            cx, cy = rng.uniform(0.5 * r, w - 0.5 * r), rng.uniform(0.5 * r, h - 0.5 * r)
            mask = _shape_mask(CLASSES[label - 1], cx, cy, r, rng.uniform(0, 2 * np.pi), h, w)
            if mask.sum() < MIN_AREA:
                continue
            new = np.where(mask, len(labels) + 1, inst)
            touched = np.unique(inst[mask])
            if all((new == j).sum() >= max(MIN_AREA, MIN_VISIBLE * full_areas[j - 1])
                   and _holes(new == j) <= MAX_HOLES * (new == j).sum() for j in touched if j):
                inst = new
                labels.append(label)
                full_areas.append(int(mask.sum()))
                _paint(img, rng, mask, cx, cy, r)
                break
    lut = np.array([0] + labels, np.uint8)
    instances = [(lab, inst == j) for j, lab in enumerate(labels, 1)]
    return _finish(img, rng), lut[inst], instances


def make_cls_image(rng, h, w, label):
    """One dominant, roughly centred shape of class ``label`` (0-based) plus small distractors."""
    img = _texture(rng, h, w)
    dim = min(h, w)
    for _ in range(int(rng.integers(0, 3))):  # small shapes of other classes, drawn underneath
        other = CLASSES[(label + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)]
        r = rng.uniform(0.05, 0.09) * dim
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        mask = _shape_mask(other, cx, cy, r, rng.uniform(0, 2 * np.pi), h, w)
        if mask.any():
            _paint(img, rng, mask, cx, cy, r)
    r = rng.uniform(0.22, 0.34) * dim
    cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    mask = _shape_mask(CLASSES[label], cx, cy, r, rng.uniform(0, 2 * np.pi), h, w)
    _paint(img, rng, mask, cx, cy, r)
    return _finish(img, rng)


# ----------------------------------------------------------------------------- writers
def _rng(seed, stream, split, index):
    return np.random.default_rng([seed, _STREAM[stream], _STREAM[split], index])


def _save_png(array, path):
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format='PNG')


def _write_det_seg(out_dir, split, n, h, w, seed, tasks):
    images, anns, per_class = [], [], dict.fromkeys(CLASSES, 0)
    for i in range(n):
        img, label_map, instances = make_scene(_rng(seed, 'scene', split, i), h, w)
        name = f'{i:06d}.png'
        if 'seg' in tasks:
            _save_png(img, osp.join(out_dir, 'seg', 'img_dir', split, name))
            _save_png(label_map, osp.join(out_dir, 'seg', 'ann_dir', split, name))
        if 'det' in tasks:
            _save_png(img, osp.join(out_dir, 'det', split, name))
            images.append(dict(id=i + 1, file_name=name, width=w, height=h))
            for label, mask in instances:
                anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=label, iscrowd=0,
                                 **mask_to_annotation(mask)))
                per_class[CLASSES[label - 1]] += 1
    counts = {}
    if 'det' in tasks:
        coco = dict(info=dict(description='localattn synthetic shapes', version=GENERATOR_VERSION),
                    licenses=[], images=images, annotations=anns,
                    categories=[dict(id=k, name=c, supercategory='shape')
                                for k, c in enumerate(CLASSES, 1)])
        ann_file = osp.join(out_dir, 'det', 'annotations', f'instances_{split}.json')
        os.makedirs(osp.dirname(ann_file), exist_ok=True)
        with open(ann_file, 'w', encoding='utf-8') as f:
            json.dump(coco, f, separators=(',', ':'))
        counts['det'] = dict(images=n, instances=len(anns), per_class=per_class)
    if 'seg' in tasks:
        counts['seg'] = dict(images=n)
    return counts


def _write_cls(out_dir, split, n, h, w, seed):
    per_class = dict.fromkeys(CLASSES, 0)
    for i in range(n):
        label = i % len(CLASSES)
        img = make_cls_image(_rng(seed, 'cls', split, i), h, w, label)
        _save_png(img, osp.join(out_dir, 'cls', split, CLASSES[label], f'{i:06d}.png'))
        per_class[CLASSES[label]] += 1
    return dict(images=n, per_class=per_class)


def _load_meta(out_dir):
    try:
        with open(osp.join(out_dir, 'meta.json'), encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generate(out_dir, num_train=48, num_val=16, size=128, seed=0, tasks=TASKS, force=False,
             verbose=False):
    """Write the dataset to ``out_dir`` and return its meta dict (also saved as ``meta.json``).

    ``size`` is an int (square) or ``(height, width)``. If ``out_dir/meta.json`` records identical
    parameters the existing dataset is kept and its meta returned, unless ``force`` is set.
    """
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[-1]))
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f'unknown tasks {sorted(unknown)}; choose from {TASKS}')
    tasks = [t for t in TASKS if t in tasks]
    params = dict(version=GENERATOR_VERSION, seed=int(seed), size=[int(h), int(w)],
                  num_train=int(num_train), num_val=int(num_val), tasks=tasks)
    old = _load_meta(out_dir)
    if old is not None and old.get('params') == params and not force:
        if verbose:
            print(f'{out_dir}: already up to date (use --force to regenerate)')
        return old
    # Clear what an older run of this generator (or this run) owns, so no stale files survive.
    if old is not None:
        os.remove(osp.join(out_dir, 'meta.json'))
    for task in set(tasks) | set((old or {}).get('params', {}).get('tasks', [])):
        shutil.rmtree(osp.join(out_dir, task), ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)

    start = time.time()
    counts = {t: {} for t in tasks}
    for split, n in zip(SPLITS, (num_train, num_val)):
        if {'det', 'seg'} & set(tasks):
            for task, c in _write_det_seg(out_dir, split, n, h, w, seed, tasks).items():
                counts[task][split] = c
        if 'cls' in tasks:
            counts['cls'][split] = _write_cls(out_dir, split, n, h, w, seed)
    all_classes = dict(det=list(CLASSES), seg=list(SEG_CLASSES), cls=list(CLASSES))
    meta = dict(generator='localattn synthetic shapes', params=params,
                classes={t: all_classes[t] for t in tasks}, counts=counts,
                notes=dict(seg='label 0 = background; use reduce_zero_label=False',
                           det='COCO category_id k = classes[k - 1]; polygons of visible regions',
                           cls='class index = position in the sorted class-folder list'))
    with open(osp.join(out_dir, 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=2)
        f.write('\n')
    if verbose:
        print(f'{out_dir}: wrote {", ".join(tasks)} ({num_train} train / {num_val} val, '
              f'{h}x{w}) in {time.time() - start:.1f}s')
    return meta


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the deterministic synthetic shapes dataset (COCO det, '
                    'ADE-like seg, folder-per-class cls) used for localattn smoke training.')
    parser.add_argument('--out-dir', default='data/synthetic', help='output root directory')
    parser.add_argument('--num-train', type=int, default=48, help='images per task in train split')
    parser.add_argument('--num-val', type=int, default=16, help='images per task in val split')
    parser.add_argument('--size', type=int, nargs='+', default=[128], metavar='N',
                        help='image size: one value (square) or two values H W')
    parser.add_argument('--seed', type=int, default=0, help='base random seed')
    parser.add_argument('--tasks', nargs='+', choices=TASKS, default=list(TASKS),
                        help='which task layouts to write')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if meta.json says the dataset is up to date')
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2) or min(args.size) < 32:
        parser.error('--size takes one or two integers >= 32')
    return args


def main(argv=None):
    args = parse_args(argv)
    generate(args.out_dir, num_train=args.num_train, num_val=args.num_val, size=args.size,
             seed=args.seed, tasks=args.tasks, force=args.force, verbose=True)


if __name__ == '__main__':
    main()
