# Mask R-CNN 1x with a NAT-Small backbone
# Everything else (recipe, schedule, optimiser) as the NAT-Tiny config.
_base_ = './mask-rcnn_nat-tiny_fpn_1x_coco.py'

# Official ImageNet-1K NAT-Small checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_small.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
