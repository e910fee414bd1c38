#!/usr/bin/env python
"""Browse a dataset as the model sees it: every item goes through the config's pipeline and its
ground truth (boxes + masks, label maps, or class labels) is drawn with the scope's visualizer
(``DetLocalVisualizer``, ``SegLocalVisualizer`` or ``UniversalVisualizer`` from the config).

    python tools/analysis_tools/browse_dataset.py CONFIG [--phase train|val|test] \\
        [--output-dir DIR] [--not-show] [--max-items N] [--checkpoint CKPT] [--cfg-options ...]

``--checkpoint`` also runs the model on each item and draws its prediction next to the ground
truth. Images are written to ``--output-dir`` as PNG (default, when no window can be shown:
``work_dirs/browse_dataset/<config name>/<phase>``). Windows are shown unless ``--not-show`` is
given or no display is available.

Coordinates: a train pipeline transforms the annotations together with the image, so both are
drawn on the transformed image. mmdet/mmseg test pipelines load the annotations *after*
``Resize`` (they stay in original-image coordinates); the image is then resized back to its
original size before drawing, so ground truth and predictions line up either way.
"""
import argparse
import os
import os.path as osp
import sys
import time

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
try:
    import localattn  # noqa: F401  registers the backbones and the safe checkpoint loader
except ImportError:  # a source checkout that was not pip-installed
    sys.path.insert(0, osp.join(ROOT, 'projects'))
    import localattn  # noqa: F401

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Draw dataset items (after the pipeline) with '
                                     'their ground truth, optionally with predictions')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--phase', default='train', choices=['train', 'val', 'test'],
                        help='which dataloader\'s dataset and pipeline to browse')
    parser.add_argument('--output-dir', help='save the pictures here (PNG)')
    parser.add_argument('--not-show', action='store_true', help='do not open a window')
    parser.add_argument('--show-interval', type=float, default=2, help='seconds per shown image')
    parser.add_argument('--max-items', type=int, help='stop after N items (default: all)')
    parser.add_argument('--checkpoint', help='also draw the predictions of this checkpoint')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='mmdet: smallest score of a drawn prediction')
    parser.add_argument('--cfg-options', nargs='+', action=_dict_action(),
                        help='override config entries (key=value)')
    args = parser.parse_args(argv)
    if args.max_items is not None and args.max_items < 1:
        parser.error('--max-items must be >= 1')
    return args


def _dict_action():
    from mmengine.config import DictAction
    return DictAction


def _display_available() -> bool:
    if sys.platform in ('darwin', 'win32'):
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def _gt_in_original_frame(pipeline) -> bool:
    """True when annotations are loaded after the first resize (mmdet/mmseg test pipelines)."""
    types = [str(t.get('type', '')) if isinstance(t, dict) else type(t).__name__ for t in pipeline]
    load = next((i for i, t in enumerate(types) if 'LoadAnnotations' in t), None)
    resize = next((i for i, t in enumerate(types) if 'Resize' in t), None)
    return load is not None and resize is not None and load > resize


def _to_rgb(inputs) -> np.ndarray:
    """``(C, H, W)`` BGR tensor from the Pack* transforms -> ``(H, W, 3)`` uint8 RGB array."""
    img = inputs.permute(1, 2, 0).cpu().numpy() if hasattr(inputs, 'permute') else np.asarray(inputs)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(img[..., ::-1])


def _unwrap_boxes(instances) -> None:
    """mmdet's visualizer wants plain tensors, not ``HorizontalBoxes``."""
    if instances is not None and 'bboxes' in instances:
        boxes = instances.bboxes
        if hasattr(boxes, 'tensor'):
            instances.bboxes = boxes.tensor


def _dataset_cfg(cfg, phase):
    loader = cfg.get(f'{phase}_dataloader')
    if loader is None or loader.get('dataset') is None:
        raise ValueError(f'config has no {phase}_dataloader.dataset')
    return loader.dataset


def _pipeline_of(dataset_cfg):
    while 'pipeline' not in dataset_cfg and 'dataset' in dataset_cfg:  # Repeat/ClassBalanced wrappers
        dataset_cfg = dataset_cfg.dataset
    return dataset_cfg.get('pipeline', [])


def build_model(cfg, checkpoint):
    from mmengine.registry import MODELS
    from mmengine.runner import load_checkpoint
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu')
    model.eval()
    return model


def predict(model, scope, item, original_frame):
    """Run ``model`` on one pipeline item; predictions in the frame the picture is drawn in."""
    import torch
    sample = item['data_samples'].clone()
    if not original_frame and scope == 'mmseg':
        # mmseg resizes its logits to ``ori_shape``; draw on the transformed image instead
        sample.set_metainfo(dict(ori_shape=tuple(item['inputs'].shape[-2:])))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[item['inputs']], data_samples=[sample]), False)
        if scope == 'mmdet':
            return model.predict(data['inputs'], data['data_samples'], rescale=original_frame)[0]
        if scope == 'mmseg':
            return model.predict(data['inputs'], data['data_samples'])[0]
        return model.predict(data['inputs'], data['data_samples'])[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmcv
    from mmengine.config import Config
    from mmengine.registry import DATASETS, VISUALIZERS, init_default_scope
    from mmengine.utils import ProgressBar

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'default_scope must be one of {SCOPES}, got {scope!r}')
    init_default_scope(scope)

    show = not args.not_show
    if show and not _display_available():
        print('no display available: not showing windows (pass --not-show to silence this)')
        show = False
    out_dir = args.output_dir
    if out_dir is None and not show:
        name = osp.splitext(osp.basename(args.config))[0]
        out_dir = osp.join('work_dirs', 'browse_dataset', name, args.phase)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)

    dataset_cfg = _dataset_cfg(cfg, args.phase)
    dataset = DATASETS.build(dataset_cfg)
    original_frame = _gt_in_original_frame(_pipeline_of(dataset_cfg))

    vis_cfg = cfg.get('visualizer') or dict(type={'mmdet': 'DetLocalVisualizer',
                                                  'mmseg': 'SegLocalVisualizer',
                                                  'mmpretrain': 'UniversalVisualizer'}[scope])
    vis_cfg = dict(vis_cfg)
    vis_cfg.update(vis_backends=None, save_dir=None, name=f'browse_dataset_{time.time_ns()}')
    visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = dataset.metainfo

    model = build_model(cfg, args.checkpoint) if args.checkpoint else None
    total = len(dataset) if args.max_items is None else min(args.max_items, len(dataset))
    progress = ProgressBar(total)
    written = []
    for index in range(total):
        item = dataset[index]
        sample = item['data_samples']
        image = _to_rgb(item['inputs'])
        if original_frame and 'ori_shape' in sample.metainfo:
            h, w = sample.metainfo['ori_shape'][:2]
            if image.shape[:2] != (h, w):
                image = mmcv.imresize(image, (w, h))
        if model is not None:
            pred = predict(model, scope, item, original_frame)
            for key in ('pred_instances', 'pred_sem_seg', 'pred_label', 'pred_score'):
                if key in pred:
                    sample.set_field(getattr(pred, key), key)
        if scope == 'mmdet':
            _unwrap_boxes(sample.get('gt_instances'))
            _unwrap_boxes(sample.get('pred_instances'))
        img_path = sample.metainfo.get('img_path') or f'{index:06d}.png'
        stem = osp.splitext(osp.basename(img_path))[0]
        out_file = osp.join(out_dir, f'{index:05d}_{stem}.png') if out_dir else None
        name = osp.basename(img_path)
        if scope == 'mmpretrain':
            visualizer.visualize_cls(image, sample, classes=dataset.metainfo.get('classes'),
                                     draw_gt=True, draw_pred=model is not None,
                                     resize=max(128, min(image.shape[:2])) if min(image.shape[:2]) < 128 else None,
                                     show=show, wait_time=args.show_interval, out_file=out_file,
                                     name=name)
        else:
            kwargs = dict(pred_score_thr=args.score_thr) if scope == 'mmdet' else {}
            visualizer.add_datasample(name, image, data_sample=sample, draw_gt=True,
                                      draw_pred=model is not None, show=show,
                                      wait_time=args.show_interval, out_file=out_file, **kwargs)
        if out_file:
            written.append(out_file)
        progress.update()
    print()
    if out_dir:
        print(f'wrote {len(written)} pictures to {osp.abspath(out_dir)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
