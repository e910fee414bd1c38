# Mask R-CNN 1x with a NAT-Mini backbone
# Everything else (recipe, schedule, optimiser) as the NAT-Tiny config.
_base_ = './mask-rcnn_nat-tiny_fpn_1x_coco.py'

# Official ImageNet-1K NAT-Mini checkpoint, as downloaded (local path, see README.md).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/nat-mini_in1k.pth'

model = dict(
    backbone=dict(
        arch='mini',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
