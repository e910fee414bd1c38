# Cascade Mask R-CNN 3x (4conv1fc, GIoU, multi-scale + crop, fp16) with a DiNAT-Small backbone
# (NAT-Small with every other block dilated; DiNAT paper's COCO dilations).
# Everything else (recipe, schedule, optimiser) as the NAT-Small config.
_base_ = '../nat/cascade-mask-rcnn_nat-small_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

# Official ImageNet-1K DiNAT-Small checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_small_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth'

model = dict(
    backbone=dict(
        type='DiNAT',
        dilations='coco',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
