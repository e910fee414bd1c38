# Cascade Mask R-CNN 3x (4conv1fc, GIoU, multi-scale + crop, fp16) with a DiNAT_s-Large backbone
# pre-trained on ImageNet-22K, drop path 0.6 and AdamW lr 5e-5 (release). Everything else as the
# DiNAT_s-Tiny config. Release result: 54.8 box / 47.2 mask mAP (see README.md).
_base_ = './cascade-mask-rcnn_dinats-tiny_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

# Official ImageNet-22K DiNAT_s-Large checkpoint (its 21841-class head is dropped on loading; a
# local file: --cfg-options model.backbone.init_cfg.checkpoint=PATH).
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth'

model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 1536]))

optim_wrapper = dict(optimizer=dict(lr=0.00005))
