"""Every config under ``configs/`` builds and trains one step.

Parametrised over the files found by glob (``_base_`` folders excluded), so a new config is tested
without editing this file. For each config:

* ``Config.fromfile`` (resolving the ``mmdet::`` / ``mmseg::`` / ``mmpretrain::`` bases and the
  ``custom_imports`` of localattn) and static checks: pretrained weights are local paths; for the
  recipe folders (``RECIPE_FOLDERS``) also the file name against the content (backbone type and
  arch, DiNAT dilations of the task, ``amp`` <=> ``AmpOptimWrapper``, ``<gpus>xb<batch>`` and
  ``auto_scale_lr``) and the ``Pretrained`` init of the dense-prediction backbones;
* the model is built through the registry of its ``default_scope`` (as the Runner does: top-level
  ``data_preprocessor`` as fallback, SyncBN reverted to BN for a single process) WITHOUT
  ``init_weights`` -- the ``Pretrained`` checkpoints are local paths that do not exist here;
* the optimiser wrapper is built from the config's own ``optim_wrapper`` (``AmpOptimWrapper`` ->
  ``OptimWrapper`` on CPU, like ``tools/train.py``); in the recipe folders its no-decay groups are
  checked against the backbone's parameter names;
* the train / val / test data pipelines compose;
* one training step on a tiny synthetic batch (data preprocessor -> loss -> backward -> optimiser
  step on the backbone parameters): finite loss, every backbone parameter gets a finite gradient,
  non-zero at the stem and at the last output norm, and the step changes the backbone.

Test-only shrinking (the wiring under test does not change): detection images are 64x64 (batch 1)
with 16 sampled RoIs per R-CNN stage instead of 512; segmentation images 64x64 (batch 2, the data
preprocessor's pad size set to 64 instead of the 512 crop); classification 64x64 (batch 2).
mmseg configs also build their ``tta_model`` around the model and compose ``tta_pipeline``; for one
config per backbone family (``TTA_END_TO_END``) the TTA pipeline and ``test_step`` run end to end on
a small non-square image.
"""
import copy
import glob
import logging
import math
import os.path as osp
import re

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')


def _find_configs():
    paths = glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    keep = [p for p in paths if '_base_' not in osp.relpath(p, CONFIG_DIR).split(osp.sep)]
    return sorted(osp.relpath(p, ROOT) for p in keep)


CONFIGS = _find_configs()
IMG = 64
# backbone family in the file name -> registered type
NAME_RE = re.compile(r'(?<![a-z])(dinat|nat|qnavit)-(mini|tiny-7x7|tiny|small|base)(?![a-z0-9])')
TYPES = {'nat': 'NAT', 'dinat': 'DiNAT', 'qnavit': 'QnAViT'}
# substrings of parameter names trained without weight decay, per backbone type (all recipes)
NO_DECAY = {
    'NAT': ('rpb', 'norm', 'gamma'),
    'DiNAT': ('rpb', 'norm', 'gamma'),
    'QnAViT': ('norm', 'relative_position_bias_table', '.rpb', '.attn_scale'),
}
DILATIONS = {'mmdet': 'coco', 'mmseg': 'ade20k', 'mmpretrain': 'imagenet'}
# folders of the paper-recipe configs: names, pretrained paths and no-decay groups are checked there;
# configs elsewhere (e.g. the synthetic demo) get the generic checks, the build and the step only
RECIPE_FOLDERS = ('nat', 'dinat', 'qnavit', 'plugin_examples')
# one mmseg config per backbone family runs the whole TTA (pipeline + test_step)
TTA_END_TO_END = {
    'configs/nat/nat-mini_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'configs/dinat/dinat-mini_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'configs/qnavit/qnavit-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
}


def test_configs_found():
    assert len(CONFIGS) >= 40, CONFIGS
    folders = {osp.basename(osp.dirname(p)) for p in CONFIGS}
    assert {'nat', 'dinat', 'qnavit', 'plugin_examples'} <= folders


# ----------------------------------------------------------------------------- helpers
def _load(path):
    from mmengine.config import Config
    return Config.fromfile(osp.join(ROOT, path))


def _walk(obj, key_path=''):
    """Yield (dotted key, value) for every leaf of nested dicts/lists."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f'{key_path}.{k}' if key_path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f'{key_path}[{i}]')
    else:
        yield key_path, obj


def _is_recipe(path):
    return osp.basename(osp.dirname(path)) in RECIPE_FOLDERS


def _static_checks(path, cfg):
    scope = cfg.default_scope
    assert scope in ('mmdet', 'mmseg', 'mmpretrain')
    assert 'localattn' in cfg.custom_imports['imports']
    assert cfg.custom_imports.get('allow_failed_imports') is False
    # pretrained weights are local paths only
    for key, value in _walk(cfg.to_dict()):
        if key.endswith(('checkpoint', 'pretrained', 'load_from')) and isinstance(value, str):
            assert '://' not in value, f'{key} = {value!r} must be a local path'
    if not _is_recipe(path):
        return
    backbone = cfg.model.backbone
    name = osp.basename(path)
    match = NAME_RE.search(name)
    assert match, f'{name}: no backbone (nat|dinat|qnavit)-<arch> in the file name'
    family, arch = match.groups()
    assert backbone.type == TYPES[family], (name, backbone.type)
    assert backbone.get('arch', 'tiny') == arch, (name, backbone.get('arch'))
    if backbone.type == 'DiNAT':
        assert backbone.dilations == DILATIONS[scope], (name, backbone.dilations)
    if scope in ('mmdet', 'mmseg'):
        init = backbone.init_cfg
        assert init['type'] == 'Pretrained' and init['checkpoint'].startswith('checkpoints/')
        assert cfg.pretrained == init['checkpoint'], 'the `pretrained` variable must be used'
        assert tuple(backbone.out_indices) == (0, 1, 2, 3)
    else:
        assert tuple(backbone.out_indices) == (3, )
    # "amp" in the name <=> fp16 optimiser wrapper
    is_amp = cfg.optim_wrapper.get('type') == 'AmpOptimWrapper'
    assert is_amp == ('amp-' in name), (name, is_amp)
    # "<gpus>xb<per gpu>" in the name matches the dataloader batch size
    gpus = re.search(r'_(\d+)xb(\d+)', name)
    if gpus:
        assert cfg.train_dataloader.batch_size == int(gpus.group(2)), name
        if 'auto_scale_lr' in cfg:
            total = int(gpus.group(1)) * int(gpus.group(2))
            assert cfg.auto_scale_lr.base_batch_size == total, name
    elif scope == 'mmdet':  # mmdet names carry no batch size: 8 GPUs x 2 = 16
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.auto_scale_lr.base_batch_size == 16


def _build_model(cfg):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    elif cfg.default_scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:  # what mmengine's Runner does
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    if cfg.default_scope == 'mmseg':
        model_cfg.data_preprocessor['size'] = (IMG, IMG)  # test-only: no 512x512 padding
    if cfg.default_scope == 'mmdet':
        _shrink_det_sampling(model_cfg.get('train_cfg'))
    model = MODELS.build(model_cfg)  # no init_weights(): Pretrained paths are not present here
    return revert_sync_batchnorm(model), MODELS


def _shrink_det_sampling(train_cfg):
    """Test-only: sample 16 RoIs per stage instead of 512 (the 4conv1fc cascade heads on 512 RoIs
    x 3 stages cost ~10x the rest of the step); the wiring under test does not change."""
    if not train_cfg:
        return
    if 'rpn_proposal' in train_cfg:
        train_cfg.rpn_proposal['max_per_img'] = min(train_cfg.rpn_proposal['max_per_img'], 64)
    rcnn = train_cfg.get('rcnn')
    for stage in (rcnn if isinstance(rcnn, list) else [rcnn] if rcnn else []):
        if 'sampler' in stage:
            stage.sampler['num'] = min(stage.sampler['num'], 16)


def _build_optim_wrapper(cfg, model):
    from mmengine.optim import build_optim_wrapper
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    if wrapper_cfg.get('type') == 'AmpOptimWrapper':  # as tools/train.py does without CUDA
        wrapper_cfg['type'] = 'OptimWrapper'
        wrapper_cfg.pop('loss_scale', None)
    return build_optim_wrapper(model, wrapper_cfg)


def _check_weight_decay(cfg, model, optim_wrapper):
    weight_decay = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            weight_decay[id(param)] = group.get('weight_decay', 0.)
    base_decay = cfg.optim_wrapper.optimizer.weight_decay
    keys = NO_DECAY[type(model.backbone).__name__]
    no_decay, decayed = 0, 0
    for name, param in model.backbone.named_parameters():
        full = f'backbone.{name}'
        if any(k in full for k in keys):
            assert weight_decay[id(param)] == 0, f'{full} must have no weight decay'
            no_decay += 1
        elif param.ndim >= 2 and 'query' not in name:
            assert weight_decay[id(param)] == pytest.approx(base_decay), full
            decayed += 1
    assert no_decay and decayed


def _det_batch(num_classes):
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=1, image_shapes=[(3, IMG, IMG)], num_items=[3],
                          num_classes=num_classes, with_mask=True)


def _seg_batch(num_classes, size=IMG, batch=2):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _cls_batch(num_classes, batch=2):
    from mmpretrain.structures import DataSample
    inputs = [torch.randint(0, 256, (3, IMG, IMG), dtype=torch.uint8) for _ in range(batch)]
    samples = [DataSample().set_gt_label(i % num_classes) for i in range(batch)]
    return dict(inputs=inputs, data_samples=samples)


def _num_classes(cfg):
    model = cfg.model
    if cfg.default_scope == 'mmdet':
        head = model.roi_head.bbox_head
        return (head[0] if isinstance(head, list) else head).num_classes
    if cfg.default_scope == 'mmseg':
        return model.decode_head.num_classes
    return model.head.num_classes


def _train_step(cfg, model, optim_wrapper):
    """``model.train_step`` unrolled so the gradients can be inspected before ``step``."""
    scope = cfg.default_scope
    num_classes = _num_classes(cfg)
    data = {'mmdet': _det_batch, 'mmseg': _seg_batch, 'mmpretrain': _cls_batch}[scope](num_classes)
    model.train()
    data = model.data_preprocessor(data, True)
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert math.isfinite(loss.item()), log_vars
    optim_wrapper.zero_grad()
    optim_wrapper.backward(loss)
    grads = {n: p.grad for n, p in model.backbone.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f'backbone parameters without gradient: {missing[:5]}'
    assert all(torch.isfinite(g).all() for g in grads.values())
    names = list(grads)
    first, last = names[0], names[-1]  # stem conv ... last output norm
    assert grads[first].abs().sum() > 0, f'no gradient reaches {first}'
    assert grads[last].abs().sum() > 0, f'no gradient at {last}'
    # step the backbone only (the config's optimiser and param groups; half the time of a full step)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    for param in model.parameters():
        if id(param) not in backbone_ids:
            param.grad = None
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    optim_wrapper.step()
    changed = [n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert changed, 'the optimiser step changed no backbone parameter'
    return log_vars


def _check_pipelines(cfg):
    """The train / val data pipelines build (every transform is registered in the scope)."""
    from mmengine.dataset import Compose
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg.get(loader, {}).get('dataset', {})
        while 'pipeline' not in dataset and isinstance(dataset.get('dataset'), dict):
            dataset = dataset['dataset']  # dataset wrappers (RepeatDataset, ...)
        if 'pipeline' in dataset:
            assert len(Compose(dataset['pipeline']).transforms) == len(dataset['pipeline'])


def _check_tta(path, cfg, model, models_registry, tmp_path):
    from mmengine.dataset import Compose, pseudo_collate
    assert cfg.tta_model.type == 'SegTTAModel'
    tta_model = models_registry.build(dict(copy.deepcopy(cfg.tta_model), module=model))
    pipeline = Compose(cfg.tta_pipeline)
    tta_aug = cfg.tta_pipeline[-1]
    assert tta_aug.type == 'TestTimeAug'
    if _is_recipe(path):  # the ADE20K protocol of the papers: 6 ratios x 2 flips
        ratios = sorted(t['scale_factor'] for t in tta_aug.transforms[0])
        assert ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
        assert sorted(t['prob'] for t in tta_aug.transforms[1]) == [0., 1.]
    if path not in TTA_END_TO_END:
        return
    from PIL import Image
    h, w = 40, 56  # non-square; every ratio gives a different size
    rng = np.random.RandomState(0)
    img_path, seg_path = str(tmp_path / 'img.png'), str(tmp_path / 'seg.png')
    Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(img_path)
    Image.fromarray(rng.randint(0, 20, (h, w), dtype=np.uint8)).save(seg_path)
    results = pipeline(dict(img_path=img_path, seg_map_path=seg_path, reduce_zero_label=True,
                            seg_fields=[]))
    assert len(results['inputs']) == 12  # 6 ratios x 2 flips
    batch = pseudo_collate([results])  # what the test dataloader does: one list per augmentation
    tta_model.eval()
    with torch.no_grad():
        preds = tta_model.test_step(batch)
    assert preds[0].pred_sem_seg.data.shape[-2:] == (h, w)


# ----------------------------------------------------------------------------- the test
@pytest.fixture(scope='module', autouse=True)
def single_thread():
    """One intra-op thread: these tensors are tiny, and on a busy machine OpenMP threads spinning
    for a shared core made the steps ~10x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def quiet_mmengine_logger():
    """The optimiser constructor logs one INFO line per parameter setting (thousands)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_and_trains_one_step(path, tmp_path, quiet_mmengine_logger):
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = _load(path)
    _static_checks(path, cfg)
    model, models_registry = _build_model(cfg)
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    optim_wrapper = _build_optim_wrapper(cfg, model)
    if _is_recipe(path):
        _check_weight_decay(cfg, model, optim_wrapper)
    _check_pipelines(cfg)
    _train_step(cfg, model, optim_wrapper)
    if cfg.default_scope == 'mmseg':
        _check_tta(path, cfg, model, models_registry, tmp_path)


# ----------------------------------------------------------------------------- plug-in recipe
PLUGIN_EXAMPLES = {
    'configs/plugin_examples/mask-rcnn_r50-to-nat-tiny_fpn_1x_coco.py':
        'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'configs/plugin_examples/upernet_r50-to-nat-tiny_4xb4-160k_ade20k-512x512.py':
        'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py',
}
# what the recipe is allowed to change (model keys as dotted paths)
PLUGIN_CHANGES = {
    'model.backbone', 'model.pretrained', 'model.neck.in_channels',
    'model.decode_head.in_channels', 'model.decode_head.in_index',
    'model.auxiliary_head.in_channels', 'model.auxiliary_head.in_index',
}


@pytest.mark.parametrize('path', sorted(PLUGIN_EXAMPLES))
def test_plugin_example_changes_only_the_backbone(path, tmp_path):
    """The examples inherit the upstream config unmodified and change only the backbone, the
    channels that depend on it (and the optimiser / lr schedule); the model step runs in the
    parametrised test above."""
    from mmengine.config import Config
    assert path in CONFIGS
    with open(osp.join(ROOT, path)) as f:
        assert f"_base_ = '{PLUGIN_EXAMPLES[path]}'" in f.read()
    cfg = _load(path)
    upstream_file = tmp_path / 'upstream.py'  # resolve 'mmdet::...' exactly as a config does
    upstream_file.write_text(f"_base_ = '{PLUGIN_EXAMPLES[path]}'\n")
    upstream = Config.fromfile(str(upstream_file))
    ours, theirs = cfg.to_dict(), upstream.to_dict()
    allowed_top = {'model', 'optim_wrapper', 'param_scheduler', 'custom_imports', 'pretrained'}
    for key in set(ours) | set(theirs):
        if key not in allowed_top:
            assert ours.get(key) == theirs.get(key), f'{key} differs from the upstream config'

    def flat(d):
        return {k: v for k, v in _walk(d)}

    mine, base = flat({'model': ours['model']}), flat({'model': theirs['model']})
    changed = {k for k in set(mine) | set(base) if mine.get(k) != base.get(k)}
    unexpected = {k for k in changed
                  if not any(k == c or k.startswith(c + '.') or k.startswith(c + '[')
                             for c in PLUGIN_CHANGES)}
    assert not unexpected, f'the plug-in example changes more than the backbone: {sorted(unexpected)}'
    assert cfg.model.backbone.type == 'NAT'
    assert 'localattn' in cfg.custom_imports['imports']
