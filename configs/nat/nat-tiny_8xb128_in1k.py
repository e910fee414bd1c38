# NAT-Tiny, ImageNet-1K classification from scratch, 300 epochs, 224x224.
# The reference facts give no ImageNet recipe for NAT, so this is mmpretrain's Swin recipe (which the
# NAT paper follows, DeiT/Swin-style): 1024 images per batch (8 GPUs x 128), AdamW lr 1e-3
# (5e-4 x 1024 / 512), wd 0.05 (none on norms, biases, 1-D parameters and `rpb` tables),
# 20-epoch linear warmup then cosine, gradient clipping at 5.0, RandAugment (m9, std 0.5),
# random erasing 0.25, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, bicubic RandomResizedCrop
# 224; evaluation resizes the short side to 256 and centre-crops 224. Paper: 83.2 top-1.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='NAT',
        arch='tiny',
        kernel_size=7,
        drop_path_rate=0.2,
        out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        init_cfg=None,  # initialised by the model-level TruncNormal below
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
    ],
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

# 8 GPUs x 128 images = 1024 images per batch (auto_scale_lr base_batch_size=1024).
train_dataloader = dict(batch_size=128)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW',
        lr=5e-4 * 1024 / 512,
        weight_decay=0.05,
        eps=1e-8,
        betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'.rpb': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=5.0))

# 20-epoch linear warmup then cosine to 1e-5, 300 epochs (from the schedule base, restated here).
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=20,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20)
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
