# Mask R-CNN 1x with a NAT-Mini backbone
# Everything else (recipe, schedule, optimiser) as the NAT-Tiny config.
_base_ = './mask-rcnn_nat-tiny_fpn_1x_coco.py'

# Official ImageNet-1K NAT-Mini checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_mini.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth'

model = dict(
    backbone=dict(
        arch='mini',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
