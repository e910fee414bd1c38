# Mask R-CNN 3x (multi-scale + crop, fp16) with a QnA-ViT-Small backbone.
# Everything else (recipe, schedule, optimiser) as the QnA-ViT-Tiny config.
_base_ = './mask-rcnn_qnavit-tiny_fpn_amp-ms-crop-3x_coco.py'

# QnA-ViT ImageNet-1K checkpoint converted from the official Flax release with
#   python tools/model_converters/qnavit_flax_to_mmpretrain.py FLAX_CKPT checkpoints/qnavit-small_in1k.pth --arch small
# (an mmpretrain checkpoint: the backbone weights sit under `backbone.`). Local path; change it here
# or on the command line with --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/qnavit-small_in1k.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 256, 512]))
