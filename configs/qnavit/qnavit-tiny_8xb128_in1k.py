# QnA-ViT-Tiny (3x3 QnA windows), ImageNet-1K classification from scratch, 300 epochs, 224x224.
# QnA paper recipe: 1024 images per batch (8 GPUs x 128), AdamW lr 5e-4 (at batch 1024, not
# rescaled), wd 0.05, cosine schedule with a 5-epoch linear warmup (20 for base), RandAugment,
# random erasing 0.25, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, bicubic RandomResizedCrop 224;
# evaluation resizes the short side to 256 and centre-crops 224 (bicubic). Paper: 81.7 top-1.
# Augmentation and evaluation pipelines are mmpretrain's Swin ones, which match that list.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='QnAViT', arch='tiny', drop_path_rate=0.05, out_indices=(3, )),
    # Official head: LayerNorm (the backbone's norm3) -> global average pool -> Linear.
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

# 8 GPUs x 128 images = 1024 images per batch (auto_scale_lr base_batch_size=1024).
train_dataloader = dict(batch_size=128)

# No weight decay on norms, biases, MSA relative position bias tables and the QnA `rpb` and
# `attn_scale` tables (the learned queries are decayed when training from scratch; the official
# fine-tuning setting also excludes them). No gradient clipping (none is stated for QnA).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=5e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.0),
            '.rpb': dict(decay_mult=0.0),
            '.attn_scale': dict(decay_mult=0.0)
        }))

warmup_epochs = 5
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=warmup_epochs)
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
