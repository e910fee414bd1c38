# Mask R-CNN 1x with a DiNAT-Tiny backbone
# (NAT-Tiny with every other block dilated; DiNAT paper's COCO dilations).
# Everything else (recipe, schedule, optimiser) as the NAT-Tiny config.
_base_ = '../nat/mask-rcnn_nat-tiny_fpn_1x_coco.py'

# Official ImageNet-1K DiNAT-Tiny checkpoint, as downloaded (local path, see README.md).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/dinat-tiny_in1k.pth'

model = dict(
    backbone=dict(
        type='DiNAT',
        dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
