# Mask R-CNN 3x (multi-scale + crop, fp16) with a DiNAT-Mini backbone
# (NAT-Mini with every other block dilated; DiNAT paper's COCO dilations).
# Everything else (recipe, schedule, optimiser) as the NAT-Mini config.
_base_ = '../nat/mask-rcnn_nat-mini_fpn_amp-ms-crop-3x_coco.py'

# Official ImageNet-1K DiNAT-Mini checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_mini_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'

model = dict(
    backbone=dict(
        type='DiNAT',
        dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
