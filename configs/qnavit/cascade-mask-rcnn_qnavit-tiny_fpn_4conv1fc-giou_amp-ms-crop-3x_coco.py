# Cascade Mask R-CNN + FPN with a QnA-ViT-Tiny backbone: 4conv1fc box heads (SyncBN) with GIoU
# loss, 3x schedule (36 epochs) with DETR-style multi-scale resize / random-crop augmentation, fp16.
# 16 images per batch (8 GPUs x 2); AdamW lr 1e-4, wd 0.05, 500-iter warmup, steps at 27/33.
# Heads and pipeline from mmdet's ConvNeXt config (mmdet 3.3 ships no Swin cascade).
# QnA-ViT has no published COCO results: this is the NAT/DiNAT detection recipe applied as is
# (untuned; drop path = the ImageNet value of the arch).
_base_ = [
    'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
    './_base_/qnavit-backbone.py',
]

# Replaces the base's `mmpretrain.models` import (its ConvNeXt backbone is deleted below).
custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# QnA-ViT ImageNet-1K checkpoint converted from the official Flax release with
#   python tools/model_converters/qnavit_flax_to_mmpretrain.py FLAX_CKPT checkpoints/qnavit-tiny_in1k.pth --arch tiny
# (an mmpretrain checkpoint: the backbone weights sit under `backbone.`). Local path; change it here
# or on the command line with --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/qnavit-tiny_in1k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        **_base_.qnavit_backbone,  # QnAViT, stages 0-3 out, nothing frozen
        arch='tiny',
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512]))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]

# fp16; on a machine without CUDA tools/train.py falls back to fp32 OptimWrapper.
# No weight decay on LayerNorms, MSA relative position bias tables and the QnA parameters `rpb`,
# `attn_scale` and `query` (`qnavit_paramwise_cfg`).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=_base_.qnavit_paramwise_cfg)
