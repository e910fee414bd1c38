# Mask R-CNN + FPN with a DiNAT_s-Tiny backbone (Swin-T's skeleton with NA / dilated NA blocks),
# 3x schedule (36 epochs) with DETR-style multi-scale resize / random-crop augmentation, fp16
# (AmpOptimWrapper), COCO instance segmentation.
# Release recipe: AdamW lr 1e-4, wd 0.05 (none on `rpb` tables and norms), 500-iter linear warmup,
# steps at epochs 27/33, 16 images per batch (8 GPUs x 2), drop path 0.2, the COCO dilations.
# Release result: 46.6 box / 42.1 mask mAP (see README.md).
# The pipeline (short side 480-800, max 1333, 384-600 crop branch) comes from the mmdet base.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
    './_base_/dinats-backbone.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-1K DiNAT_s-Tiny checkpoint, loaded as is (downloaded once into torch hub's
# cache). To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_s_tiny_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        **_base_.dinats_backbone,  # DiNAT_s, 7x7 neighbourhoods, stages 0-3 out, nothing frozen
        arch='tiny',
        dilations='coco',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

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
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=_base_.dinats_paramwise_cfg)
