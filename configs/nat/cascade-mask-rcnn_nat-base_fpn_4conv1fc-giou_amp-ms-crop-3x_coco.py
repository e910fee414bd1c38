# Cascade Mask R-CNN 3x (4conv1fc, GIoU, multi-scale + crop, fp16) with a NAT-Base backbone
# Everything else (recipe, schedule, optimiser) as the NAT-Tiny config.
_base_ = './cascade-mask-rcnn_nat-tiny_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

# Official ImageNet-1K NAT-Base checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_base.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
