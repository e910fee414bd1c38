"""Tests for tools/dataset_converters/generate_synthetic.py (pure numpy/PIL, a few seconds)."""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'dataset_converters', 'generate_synthetic.py')


def _load_module():
    spec = importlib.util.spec_from_file_location('generate_synthetic', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gs = _load_module()
KW = dict(num_train=8, num_val=4, size=64, seed=3)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('synthetic'))
    meta = gs.generate(out, **KW)
    return out, meta


def _tree(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                files[osp.relpath(path, root)] = f.read()
    return files


def _rasterize(polygons, h, w, scale=4):
    """Fill COCO polygons (pixel-corner convention) by sampling pixel centres on a finer grid."""
    canvas = Image.new('L', (w * scale, h * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for p in polygons:
        draw.polygon([(x * scale - 0.5, y * scale - 0.5) for x, y in zip(p[0::2], p[1::2])], fill=1)
    fine = np.asarray(canvas, np.float32).reshape(h, scale, w, scale)
    return fine.mean(axis=(1, 3)) >= 0.5


def test_meta_and_layout(dataset):
    out, meta = dataset
    assert meta['params']['size'] == [64, 64] and meta['params']['seed'] == 3
    assert meta['classes']['det'] == list(gs.CLASSES) == sorted(gs.CLASSES)
    assert meta['classes']['seg'] == ['background'] + list(gs.CLASSES)
    with open(osp.join(out, 'meta.json')) as f:
        assert json.load(f) == meta
    for split, n in (('train', 8), ('val', 4)):
        assert len(os.listdir(osp.join(out, 'det', split))) == n
        assert sorted(os.listdir(osp.join(out, 'seg', 'img_dir', split))) == \
            sorted(os.listdir(osp.join(out, 'seg', 'ann_dir', split)))
        assert sorted(os.listdir(osp.join(out, 'cls', split))) == list(gs.CLASSES)
        for name in gs.CLASSES:  # every class folder is non-empty
            assert os.listdir(osp.join(out, 'cls', split, name)), (split, name)
        assert sum(meta['counts']['cls'][split]['per_class'].values()) == n


def test_deterministic(dataset, tmp_path):
    out, _ = dataset
    gs.generate(str(tmp_path), **KW)
    first, second = _tree(out), _tree(str(tmp_path))
    assert first.keys() == second.keys() and len(first) > 30
    assert all(first[k] == second[k] for k in first)
    gs.generate(str(tmp_path), **dict(KW, seed=4), tasks=['seg'])
    changed = _tree(str(tmp_path))
    assert not any(k.startswith(('det', 'cls')) for k in changed)  # stale tasks removed
    assert changed['seg/ann_dir/train/000000.png'] != first['seg/ann_dir/train/000000.png']


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations_valid(dataset, split):
    out, _ = dataset
    with open(osp.join(out, 'det', 'annotations', f'instances_{split}.json')) as f:
        coco = json.load(f)
    cat_ids = {c['id'] for c in coco['categories']}
    names = [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])]
    assert names == list(gs.CLASSES)
    assert min(cat_ids) == 1
    images = {im['id']: im for im in coco['images']}
    assert len(images) == len(coco['images'])
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])
    assert coco['annotations']
    for im in coco['images']:
        assert osp.isfile(osp.join(out, 'det', split, im['file_name']))
        assert Image.open(osp.join(out, 'det', split, im['file_name'])).size == \
            (im['width'], im['height'])
    for ann in coco['annotations']:
        im = images[ann['image_id']]
        x, y, w, h = ann['bbox']
        assert ann['category_id'] in cat_ids and ann['iscrowd'] == 0
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= im['width'] and y + h <= im['height']
        assert 0 < ann['area'] <= w * h
        assert ann['segmentation']
        for poly in ann['segmentation']:
            assert len(poly) >= 6 and len(poly) % 2 == 0
            assert all(isinstance(v, float) for v in poly)
            assert all(0 <= v <= im['width'] for v in poly[0::2])
            assert all(0 <= v <= im['height'] for v in poly[1::2])


def test_polygons_match_seg_maps(dataset):
    out, _ = dataset
    with open(osp.join(out, 'det', 'annotations', 'instances_train.json')) as f:
        coco = json.load(f)
    checked = 0
    for im in coco['images']:
        seg_file = osp.join(out, 'seg', 'ann_dir', 'train', im['file_name'])
        label_map = np.asarray(Image.open(seg_file))
        assert label_map.dtype == np.uint8 and label_map.shape == (im['height'], im['width'])
        assert label_map.max() <= len(gs.CLASSES)
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        assert set(np.unique(label_map)) - {0} == {a['category_id'] for a in anns}
        for cat in {a['category_id'] for a in anns}:
            polys = [p for a in anns if a['category_id'] == cat for p in a['segmentation']]
            pred = _rasterize(polys, im['height'], im['width'])
            gt = label_map == cat
            iou = (pred & gt).sum() / (pred | gt).sum()
            assert iou > 0.8, (im['file_name'], cat, iou)
            assert abs(sum(a['area'] for a in anns if a['category_id'] == cat) - gt.sum()) == 0
            checked += 1
    assert checked >= 8


def test_trace_boundaries_exact():
    mask = np.zeros((12, 12), bool)
    mask[2:9, 2:9] = True
    mask[4:6, 4:6] = False          # a hole
    mask[10, 10] = mask[11, 11] = True  # two diagonal pixels -> two loops
    loops = gs.trace_boundaries(mask)
    areas = sorted(a for _, a in loops)
    assert areas == [-4.0, 1.0, 1.0, 49.0]
    ann = gs.mask_to_annotation(mask)
    assert ann['bbox'] == [2.0, 2.0, 10.0, 10.0] and ann['area'] == float(mask.sum())


def test_non_square_and_cli_noop(tmp_path):
    out = str(tmp_path / 'ds')
    cmd = [sys.executable, SCRIPT, '--out-dir', out, '--num-train', '4', '--num-val', '2',
           '--size', '48', '80', '--tasks', 'det', 'seg']
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert 'wrote' in first.stdout
    stamp = os.stat(osp.join(out, 'meta.json')).st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert 'already up to date' in again.stdout
    assert os.stat(osp.join(out, 'meta.json')).st_mtime_ns == stamp
    assert not osp.exists(osp.join(out, 'cls'))
    assert Image.open(osp.join(out, 'det', 'train', '000000.png')).size == (80, 48)
    forced = subprocess.run(cmd + ['--force'], capture_output=True, text=True, check=True)
    assert 'wrote' in forced.stdout


def test_pycocotools_loads(dataset):
    coco_api = pytest.importorskip('pycocotools.coco')
    out, _ = dataset
    coco = coco_api.COCO(osp.join(out, 'det', 'annotations', 'instances_val.json'))
    assert len(coco.getImgIds()) == 4
    ann_ids = coco.getAnnIds(imgIds=coco.getImgIds()[:1])
    assert ann_ids
    for ann in coco.loadAnns(ann_ids):
        mask = coco.annToMask(ann)
        assert abs(int(mask.sum()) - ann['area']) <= 0.2 * ann['area']
