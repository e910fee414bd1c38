# UPerNet + FCN auxiliary head on a tiny NAT, trained from scratch on the synthetic shapes dataset.
#
# A CPU-sized demo of the ADE20K recipe (`tools/demo.py` / `make demo`): 5 classes (background +
# 4 shapes), 128x128 images, 1400 iterations of 4 images. The data root defaults to
# <repo>/data/synthetic (written by tools/dataset_converters/generate_synthetic.py) wherever you run
# from; point it at another generator output ROOT with
#   --cfg-options train_dataloader.dataset.data_root=ROOT/seg val_dataloader.dataset.data_root=ROOT/seg \
#       test_dataloader.dataset.data_root=ROOT/seg
# (`data_root` itself is substituted when this file is read, so overriding it alone changes nothing;
# mmseg's visualization hook builds the train loader during `tools/test.py --show-dir`, so keep the
# train root valid too).
# Multi-scale + flip evaluation: tools/test.py CONFIG CKPT --tta (uses `tta_model` / `tta_pipeline`).
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['localattn'], allow_failed_imports=False)
default_scope = 'mmseg'

data_root = '{{ fileDirname }}/../../data/synthetic/'
dataset_type = 'BaseSegDataset'
classes = ('background', 'circle', 'square', 'star', 'triangle')
palette = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0], [60, 200, 60]]
metainfo = dict(classes=classes, palette=palette)
crop_size = (128, 128)
num_classes = len(classes)

# GroupNorm in the heads: with 4 images per batch on one process, BatchNorm statistics of the
# pyramid-pooling branches (a 1x1 global pool has 4 values per channel) are too noisy to evaluate
# with. (The ADE20K recipe uses SyncBN over 8 GPUs x 2 images.)
norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
# About 83% of the pixels are background: down-weighting it lets the shapes show up in a few hundred
# iterations from scratch. (mmseg's weighted CE cannot handle ignored pixels (255), so the train
# pipeline below never pads: it only scales up before cropping.)
class_weight = [0.2, 1.0, 1.0, 1.0, 1.0]
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='NAT',
        # a custom tiny arch: widths 32/64/128/256, 5 blocks, 7x7 neighbourhoods
        arch=dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.,
                  kernel_size=7),
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='UPerHead',
        in_channels=[32, 64, 128, 256],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=64,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0,
                         class_weight=class_weight)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=128,
        in_index=2,
        channels=32,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4,
                         class_weight=class_weight)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(1.0, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')
]
# Multi-scale (0.75-1.5) + horizontal flip evaluation, enabled by `tools/test.py --tta`.
img_ratios = [0.75, 1.0, 1.25, 1.5]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations', reduce_zero_label=False)],
            [dict(type='PackSegInputs')],
        ])
]
tta_model = dict(type='SegTTAModel')

train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        metainfo=metainfo,
        data_root=data_root + 'seg',
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        img_suffix='.png',
        seg_map_suffix='.png',
        reduce_zero_label=False,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        metainfo=metainfo,
        data_root=data_root + 'seg',
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        img_suffix='.png',
        seg_map_suffix='.png',
        reduce_zero_label=False,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# AdamW with no decay on norms and relative-position tables (as the NAT ADE20K recipe), plain
# fp32 OptimWrapper (CPU), linear warm-up then poly decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'rpb': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
    }),
    clip_grad=dict(max_norm=5.0))
max_iters = 1400  # tools/demo.py's full profile trains exactly this schedule
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=1e-5, power=1.0, by_epoch=False, begin=30, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # interval=1: `tools/test.py --show-dir` draws every test image (mmseg's default is every 50th)
    visualization=dict(type='SegVisualizationHook', interval=1))
visualizer = dict(type='SegLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')],
                  name='visualizer', alpha=0.5)
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
