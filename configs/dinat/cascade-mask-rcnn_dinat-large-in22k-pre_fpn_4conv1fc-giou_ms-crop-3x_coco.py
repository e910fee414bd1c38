# Cascade Mask R-CNN 3x (4conv1fc, GIoU, multi-scale + crop) with a DiNAT-Large backbone pre-trained
# on ImageNet-22K, fp32 (the release disables fp16 for DiNAT-Large), drop path 0.6, AdamW lr 7.5e-5
# (release). Everything else (heads, pipeline, 36-epoch schedule, wd 0.05, 500-iter warmup, 8 GPUs x
# 2, COCO dilations) as the DiNAT-Base config. Release result: 55.3 box / 47.8 mask mAP (README.md).
_base_ = './cascade-mask-rcnn_dinat-base_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

# Official ImageNet-22K DiNAT-Large checkpoint (its 21841-class head is dropped on loading;
# downloaded once into torch hub's cache). To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_large_in22k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 1536]))

# fp32; no weight decay on `rpb` tables and LayerNorms (`nat_paramwise_cfg`)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.000075, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=_base_.nat_paramwise_cfg)
