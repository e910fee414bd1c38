# Cascade Mask R-CNN 3x (4conv1fc, GIoU, multi-scale + crop, fp16) with a DiNAT_s-Base backbone,
# drop path 0.6 and AdamW lr 7.5e-5 (release). Everything else as the DiNAT_s-Tiny config.
# Release result: 52.6 box / 45.3 mask mAP (see README.md).
_base_ = './cascade-mask-rcnn_dinats-tiny_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

# Official ImageNet-1K DiNAT_s-Base checkpoint (a local file: --cfg-options
# model.backbone.init_cfg.checkpoint=PATH).
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))

optim_wrapper = dict(optimizer=dict(lr=0.000075))
