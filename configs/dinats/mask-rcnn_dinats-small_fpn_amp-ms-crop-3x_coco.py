# Mask R-CNN 3x (multi-scale + crop, fp16) with a DiNAT_s-Small backbone, drop path 0.35 (release).
# Everything else (recipe, schedule, optimiser) as the DiNAT_s-Tiny config.
# Release result: 48.6 box / 43.5 mask mAP (see README.md).
_base_ = './mask-rcnn_dinats-tiny_fpn_amp-ms-crop-3x_coco.py'

# Official ImageNet-1K DiNAT_s-Small checkpoint (a local file: --cfg-options
# model.backbone.init_cfg.checkpoint=PATH).
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_small_in1k_224.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.35,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
