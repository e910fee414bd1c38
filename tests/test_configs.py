"""Every config under ``configs/`` builds and trains one step.

Parametrised over the files found by glob (``_base_`` folders excluded), so a new config is tested
without editing this file. For each config:

* ``Config.fromfile`` (resolving the ``mmdet::`` / ``mmseg::`` / ``mmpretrain::`` bases and the
  ``custom_imports`` of localattn) and static checks: pretrained weights are the official release's
  URLs (``https://shi-labs.com/projects/...``) or local paths (QnA-ViT, whose official weights are
  Flax files to convert); for the recipe folders (``RECIPE_FOLDERS``) also the file name against the
  content (backbone type and arch, kernel 11 for ``-11x11``, the dilations of the task and input
  size, ``amp`` <=> ``AmpOptimWrapper``, ``<gpus>xb<batch>`` and ``auto_scale_lr``), the
  ``Pretrained`` init of the dense-prediction and ImageNet-22K fine-tuning backbones (the URL names
  the backbone's family and size) and none for the ImageNet configs trained from scratch;
* the model is built through the registry of its ``default_scope`` (as the Runner does: top-level
  ``data_preprocessor`` as fallback, SyncBN reverted to BN for a single process) WITHOUT
  ``init_weights``: nothing is downloaded, and the module-wide ``no_network`` fixture makes any
  connection attempt fail;
* the optimiser wrapper is built from the config's own ``optim_wrapper`` (``AmpOptimWrapper`` ->
  ``OptimWrapper`` on CPU, like ``tools/train.py``); in the recipe folders its no-decay groups are
  checked against the backbone's parameter names (and, for Mask2Former, the backbone's 0.1x lr);
* the train / val / test data pipelines compose;
* one training step on a tiny synthetic batch (data preprocessor -> loss -> backward -> optimiser
  step on the backbone parameters): finite loss, every backbone parameter gets a finite gradient,
  non-zero at the stem and at the last output norm, and the step changes the backbone.

Test-only shrinking (the wiring under test does not change): detection images are 64x64 (batch 1)
with 16 sampled RoIs per R-CNN stage instead of 512; segmentation images 64x64 (batch 2, the data
preprocessor's pad size set to 64 instead of the 512 crop); classification 64x64 (batch 2);
Mask2Former with 8 queries, 256 sampled mask points and 64x64 batch padding instead of 100-200
queries, 12544 points and 1024x1024.
mmseg configs also build their ``tta_model`` around the model and compose ``tta_pipeline``; for one
config per backbone family (``TTA_END_TO_END``) the TTA pipeline and ``test_step`` run end to end on
a small non-square image. For one Mask2Former config per library (``VAL_END_TO_END``: COCO panoptic
in mmdet, ADE20K semantic in mmseg) a validation step runs on a tiny synthetic dataset written in the
dataset's own format (the config's dataset class and test pipeline, the image scale shrunk), and the
evaluators that need no extra package score the predictions.
"""
import copy
import glob
import logging
import math
import os
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
# backbone family-size in the file name -> registered type
NAME_RE = re.compile(r'(?<![a-z])(dinats|dinat-isotropic|nat-isotropic|dinat|nat|qnavit)-'
                     r'(mini|tiny-7x7|tiny|small|base|large)(?![a-z0-9])')
TYPES = {'nat': 'NAT', 'dinat': 'DiNAT', 'qnavit': 'QnAViT', 'dinats': 'DiNATs',
         'nat-isotropic': 'IsotropicNAT', 'dinat-isotropic': 'IsotropicDiNAT'}
# how the official checkpoint files name each family (`<prefix>_<arch>...pth`)
URL_PREFIX = {'NAT': 'CLS/nat', 'DiNAT': 'dinat', 'DiNATs': 'dinat_s'}
OFFICIAL_URL = 'https://shi-labs.com/projects/'
# substrings of parameter names trained without weight decay, per backbone type (all recipes)
NO_DECAY = {
    'NAT': ('rpb', 'norm', 'gamma'),
    'DiNAT': ('rpb', 'norm', 'gamma'),
    'DiNATs': ('rpb', 'norm'),
    'IsotropicNAT': ('rpb', 'norm'),
    'IsotropicDiNAT': ('rpb', 'norm'),
    'QnAViT': ('norm', 'relative_position_bias_table', '.rpb', '.attn_scale'),
}
# folders of the paper-recipe configs: names, pretrained paths and no-decay groups are checked there;
# configs elsewhere (e.g. the synthetic demo) get the generic checks, the build and the step only
RECIPE_FOLDERS = ('nat', 'dinat', 'dinats', 'isotropic', 'qnavit', 'plugin_examples')
# one mmseg config per backbone family runs the whole TTA (pipeline + test_step)
TTA_END_TO_END = {
    'configs/nat/nat-mini_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'configs/dinat/dinat-mini_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'configs/dinats/dinats-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
    'configs/qnavit/qnavit-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
}
# one Mask2Former config per library runs a validation step on a synthetic dataset
VAL_END_TO_END = {
    'configs/dinat/mask2former_dinat-tiny_8xb2-lsj-50e_coco-panoptic.py',
    'configs/dinat/mask2former_dinat-large-11x11-in22k-pre_8xb2-160k_ade20k-640x640.py',
}


def _expected_dilations(name, scope, backbone_type, kernel_size):
    """The dilation preset a DiNAT / DiNATs config of this name must use (None: explicit lists)."""
    if scope == 'mmpretrain':
        return 'imagenet-384' if '384px' in name and kernel_size == 7 else 'imagenet'
    if name.startswith('mask2former_'):
        return 'mask2former' if kernel_size == 11 else 'coco'
    if scope == 'mmdet':
        return 'coco'
    if '640x640' in name:
        return 'ade20k-640' if backbone_type == 'DiNAT' else None  # DiNATs: the release's lists
    return 'ade20k'


def test_configs_found():
    assert len(CONFIGS) >= 80, CONFIGS
    assert VAL_END_TO_END <= set(CONFIGS) and TTA_END_TO_END <= set(CONFIGS)
    folders = {osp.basename(osp.dirname(p)) for p in CONFIGS}
    assert {'nat', 'dinat', 'dinats', 'isotropic', 'qnavit', 'plugin_examples'} <= folders


@pytest.fixture(scope='module', autouse=True)
def no_network():
    """Building, stepping and validating a config must not touch the network (the official
    checkpoint URLs are only read by ``init_weights``, which these tests never call)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f'network access from a config test: {args}')

    connect = socket.socket.connect
    socket.socket.connect = refuse
    yield
    socket.socket.connect = connect


@pytest.fixture(scope='module', autouse=True)
def panopticapi_utils():
    """mmdet's `LoadPanopticAnnotations` (COCO panoptic pipelines) imports `panopticapi.utils` for
    one function, `rgb2id`; panopticapi is not on PyPI. Without it, a stand-in module provides that
    function (test-only; `CocoPanopticMetric`, which needs the whole package, is then skipped)."""
    import sys
    import types
    try:
        import panopticapi.utils  # noqa: F401
        yield True
        return
    except ImportError:
        pass

    def rgb2id(color):  # COCO panoptic PNGs: id = R + 256 G + 256^2 B
        color = np.asarray(color, dtype=np.int64)
        return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]

    package, utils = types.ModuleType('panopticapi'), types.ModuleType('panopticapi.utils')
    utils.rgb2id = rgb2id
    package.utils = utils
    sys.modules.update({'panopticapi': package, 'panopticapi.utils': utils})
    yield False
    for name in ('panopticapi', 'panopticapi.utils'):
        sys.modules.pop(name, None)


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


def _metafile_entries():
    """{config path: its model-zoo metafile entry} (model-index.yml; tests/test_model_zoo_metadata.py
    checks the metadata itself)."""
    import yaml
    with open(osp.join(ROOT, 'model-index.yml'), encoding='utf-8') as f:
        metafiles = yaml.safe_load(f)['Import']
    entries = {}
    for metafile in metafiles:
        with open(osp.join(ROOT, metafile), encoding='utf-8') as f:
            entries.update({m['Config']: m for m in yaml.safe_load(f)['Models']})
    return entries


def _check_metafile_schedule(path, cfg):
    """The metafile's `Epochs` / `Iterations` are the config's."""
    metadata = _metafile_entries()[path]['Metadata']
    if 'Epochs' in metadata:
        assert cfg.train_cfg.max_epochs == metadata['Epochs'], path
    if 'Iterations' in metadata:
        assert cfg.train_cfg.max_iters == metadata['Iterations'], path


def _is_recipe(path):
    return osp.basename(osp.dirname(path)) in RECIPE_FOLDERS


def _static_checks(path, cfg):
    scope = cfg.default_scope
    assert scope in ('mmdet', 'mmseg', 'mmpretrain')
    assert 'localattn' in cfg.custom_imports['imports']
    assert cfg.custom_imports.get('allow_failed_imports') is False
    # pretrained weights: the official release's files by URL, or local paths
    for key, value in _walk(cfg.to_dict()):
        if key.endswith(('checkpoint', 'pretrained', 'load_from')) and isinstance(value, str):
            assert '://' not in value or value.startswith(OFFICIAL_URL), f'{key} = {value!r}'
    if not _is_recipe(path):
        return
    backbone = cfg.model.backbone
    name = osp.basename(path)
    match = NAME_RE.search(name)
    assert match, f'{name}: no backbone <family>-<arch> in the file name'
    family, arch = match.groups()
    assert backbone.type == TYPES[family], (name, backbone.type)
    assert backbone.get('arch', 'tiny') == arch, (name, backbone.get('arch'))
    kernel_size = backbone.get('kernel_size', 3 if family == 'qnavit' else 7)
    if family != 'qnavit':
        assert kernel_size == (11 if f'{family}-{arch}-11x11' in name else 7), (name, kernel_size)
    if backbone.type in ('DiNAT', 'DiNATs'):
        expected = _expected_dilations(name, scope, backbone.type, kernel_size)
        if expected is None:
            assert isinstance(backbone.dilations, list), (name, backbone.dilations)
        else:
            assert backbone.dilations == expected, (name, backbone.dilations)
    init = backbone.get('init_cfg')
    if scope in ('mmdet', 'mmseg') or 'in22k-pre' in name:
        assert init['type'] == 'Pretrained', name
        assert cfg.pretrained == init['checkpoint'], 'the `pretrained` variable must be used'
        checkpoint = init['checkpoint']
        if backbone.type == 'QnAViT':  # Flax weights, converted by the user: a local path
            assert checkpoint.startswith('checkpoints/'), checkpoint
        else:  # the official file of this family and size, ImageNet-22K for the `in22k-pre` names
            assert checkpoint.startswith(OFFICIAL_URL), checkpoint
            file_name = checkpoint.split('/checkpoints/')[-1]
            assert f'{URL_PREFIX[backbone.type]}_{arch}' in file_name, (name, checkpoint)
            assert ('imagenet22k/' in checkpoint) == ('in22k-pre' in name), (name, checkpoint)
            assert ('11x11' in checkpoint) == ('-11x11' in name), (name, checkpoint)
    else:  # ImageNet from scratch: no pretrained backbone
        assert init is None or init.get('type') != 'Pretrained', name
    if scope in ('mmdet', 'mmseg'):
        assert tuple(backbone.out_indices) == (0, 1, 2, 3)
    else:
        assert tuple(backbone.out_indices) == ((-1, ) if 'isotropic' in family else (3, ))
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
    _shrink_mask2former(model_cfg)
    model = MODELS.build(model_cfg)  # no init_weights(): nothing is downloaded
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


def _mask2former_head(model_cfg):
    head = model_cfg.get('panoptic_head') or model_cfg.get('decode_head')
    return head if head is not None and head.get('type') == 'Mask2FormerHead' else None


def _shrink_mask2former(model_cfg):
    """Test-only, Mask2Former on CPU: 8 queries instead of 100-200, 256 sampled mask points instead
    of 12544, batches padded to 64x64 instead of 1024x1024 (mmdet's LSJ `BatchFixedSizePad`)."""
    head = _mask2former_head(model_cfg)
    if head is None:
        return
    head['num_queries'] = 8
    train_cfg = head.get('train_cfg') or model_cfg.train_cfg  # mmseg: the head's; mmdet: the model's
    train_cfg['num_points'] = 256
    for augment in model_cfg.data_preprocessor.get('batch_augments') or []:
        if augment.get('type') == 'BatchFixedSizePad':
            augment['size'] = (IMG, IMG)


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
    if _mask2former_head(cfg.model) is not None:  # upstream's rule: the backbone at 0.1x the lr
        base_lr = cfg.optim_wrapper.optimizer.lr
        lrs = {id(p): g['lr'] for g in optim_wrapper.optimizer.param_groups for p in g['params']}
        for name, param in model.backbone.named_parameters():
            assert lrs[id(param)] == pytest.approx(0.1 * base_lr), f'backbone.{name}'


def _det_batch(cfg):
    from mmdet.testing import demo_mm_inputs
    head = cfg.model.get('panoptic_head')
    if head is None:
        num_classes = _num_classes(cfg)
        return demo_mm_inputs(batch_size=1, image_shapes=[(3, IMG, IMG)], num_items=[3],
                              num_classes=num_classes, with_mask=True)
    # Mask2Former: things from the instances, stuff (panoptic configs) from a semantic map
    things, stuff = head.num_things_classes, head.num_stuff_classes
    data = demo_mm_inputs(batch_size=1, image_shapes=[(3, IMG, IMG)], num_items=[3],
                          num_classes=things, with_mask=True, with_semantic=stuff > 0)
    if stuff:
        from mmengine.structures import PixelData
        for sample in data['data_samples']:
            sem_seg = things + torch.randint(0, stuff, (1, IMG, IMG))
            sample.gt_sem_seg = PixelData(sem_seg=sem_seg)
    return data


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
    if cfg.default_scope == 'mmdet' and 'panoptic_head' in model:
        return model.panoptic_head.num_things_classes + model.panoptic_head.num_stuff_classes
    if cfg.default_scope == 'mmdet':
        head = model.roi_head.bbox_head
        return (head[0] if isinstance(head, list) else head).num_classes
    if cfg.default_scope == 'mmseg':
        return model.decode_head.num_classes
    return model.head.num_classes


def _train_step(cfg, model, optim_wrapper):
    """``model.train_step`` unrolled so the gradients can be inspected before ``step``."""
    scope = cfg.default_scope
    if scope == 'mmdet':
        data = _det_batch(cfg)
    else:
        data = {'mmseg': _seg_batch, 'mmpretrain': _cls_batch}[scope](_num_classes(cfg))
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
def test_config_builds_and_trains_one_step(path, tmp_path, quiet_mmengine_logger, panopticapi_utils):
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = _load(path)
    _static_checks(path, cfg)
    _check_metafile_schedule(path, cfg)
    model, models_registry = _build_model(cfg)
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    optim_wrapper = _build_optim_wrapper(cfg, model)
    if _is_recipe(path):
        _check_weight_decay(cfg, model, optim_wrapper)
    _check_pipelines(cfg)
    _train_step(cfg, model, optim_wrapper)
    if cfg.default_scope == 'mmseg':
        _check_tta(path, cfg, model, models_registry, tmp_path)
    if path in VAL_END_TO_END:
        _check_validation(cfg, model, tmp_path / 'val', panopticapi_utils)


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


# ----------------------------------------------------------------------------- Mask2Former validation
def _synthetic_module():
    import importlib.util
    script = osp.join(ROOT, 'tools', 'dataset_converters', 'generate_synthetic.py')
    spec = importlib.util.spec_from_file_location('generate_synthetic', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_coco_panoptic(root, classes, num_things, num_images=2, size=IMG):
    """A COCO panoptic val set (images, panoptic PNGs + json) and the matching instances json,
    from the synthetic "shapes" scenes: shape k is COCO class k-1 (a thing), the background the
    first stuff class. Category ids are 1..len(classes) in the dataset's class order."""
    import json
    gs = _synthetic_module()
    categories = [dict(id=i + 1, name=c, isthing=int(i < num_things), supercategory='synthetic')
                  for i, c in enumerate(classes)]
    images, panoptic, instances = [], [], []
    for i in range(num_images):
        img, _, scene = gs.make_scene(np.random.default_rng([7, i]), size, size)
        name = f'{i:06d}.png'
        gs._save_png(img, osp.join(root, 'val2017', name))
        images.append(dict(id=i + 1, file_name=name, width=size, height=size))
        ids = np.ones((size, size), np.int64)  # segment 1: background (first stuff class)
        segments = []
        for j, (label, mask) in enumerate(scene, 2):
            ids[mask] = j
            segments.append(dict(id=j, category_id=label, iscrowd=0))
            instances.append(dict(id=len(instances) + 1, image_id=i + 1, category_id=label,
                                  iscrowd=0, **gs.mask_to_annotation(mask)))
        segments.append(dict(id=1, category_id=num_things + 1, iscrowd=0))
        for seg in segments:
            ys, xs = np.nonzero(ids == seg['id'])
            seg.update(area=int(len(xs)), bbox=[int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                                                 int(np.ptp(ys)) + 1])
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        gs._save_png(rgb, osp.join(root, 'annotations', 'panoptic_val2017', name))
        panoptic.append(dict(image_id=i + 1, file_name=name, segments_info=segments))
    with open(osp.join(root, 'annotations', 'panoptic_val2017.json'), 'w') as f:
        json.dump(dict(images=images, annotations=panoptic, categories=categories), f)
    with open(osp.join(root, 'annotations', 'instances_val2017.json'), 'w') as f:
        json.dump(dict(images=images, annotations=instances,
                       categories=[c for c in categories if c['isthing']]), f)


def _shrink_test_resize(pipeline, scale):
    for transform in pipeline:
        if transform['type'] == 'Resize':
            transform['scale'] = scale  # test-only: the config's (1333, 800) / (2560, 640)
    return pipeline


def _check_validation(cfg, model, tmp_path, panopticapi_utils):
    """One validation step of Mask2Former (mmdet COCO panoptic, mmseg ADE20K semantic) on a tiny
    synthetic dataset read by the config's dataset class and test pipeline, then the config's
    evaluators (mmdet's CocoPanopticMetric only when panopticapi is installed)."""
    from mmengine.dataset import pseudo_collate
    from mmengine.evaluator import Evaluator
    dataset_cfg = copy.deepcopy(cfg.val_dataloader.dataset)
    root = str(tmp_path)
    os.makedirs(root, exist_ok=True)
    if cfg.default_scope == 'mmdet':
        from mmdet.datasets import CocoPanopticDataset
        from mmdet.registry import DATASETS, METRICS
        meta = CocoPanopticDataset.METAINFO
        _write_coco_panoptic(root, meta['classes'], len(meta['thing_classes']))
        dataset_cfg.update(data_root=root + '/')
        metric_cfgs = []
        for metric in copy.deepcopy(cfg.val_evaluator):
            if metric['type'] == 'CocoPanopticMetric':
                if not panopticapi_utils:  # the stand-in module has rgb2id only
                    continue
                metric.update(ann_file=f'{root}/annotations/panoptic_val2017.json',
                              seg_prefix=f'{root}/annotations/panoptic_val2017/')
            else:
                metric.update(ann_file=f'{root}/annotations/instances_val2017.json')
            metric_cfgs.append(metric)
    else:
        from mmseg.registry import DATASETS, METRICS
        _synthetic_module().generate(root, num_train=1, num_val=2, size=IMG, seed=0, tasks=['seg'])
        dataset_cfg.update(data_root=f'{root}/seg', img_suffix='.png',
                           data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'))
        metric_cfgs = [copy.deepcopy(cfg.val_evaluator)]
    _shrink_test_resize(dataset_cfg.pipeline, (4 * IMG, IMG))
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 2
    batch = pseudo_collate([dataset[0], dataset[1]])
    model.eval()
    with torch.no_grad():
        outputs = model.val_step(batch)
    assert len(outputs) == 2
    for sample in outputs:
        if cfg.default_scope == 'mmdet':
            assert sample.pred_panoptic_seg.sem_seg.shape[-2:] == (IMG, IMG)
            assert len(sample.pred_instances) > 0
        else:
            assert sample.pred_sem_seg.data.shape[-2:] == (IMG, IMG)
    evaluator = Evaluator([METRICS.build(m) for m in metric_cfgs])
    evaluator.dataset_meta = dataset.metainfo
    evaluator.process(data_samples=outputs, data_batch=batch)
    results = evaluator.evaluate(len(dataset))
    expected = {'mmdet': ['coco/segm_mAP'], 'mmseg': ['mIoU']}[cfg.default_scope]
    if cfg.default_scope == 'mmdet' and panopticapi_utils:
        expected.append('coco_panoptic/PQ')
    for key in expected:
        assert key in results and math.isfinite(results[key]), (key, results)
