# Mask2Former with a DiNAT-Small backbone, COCO instance segmentation, 50 epochs: NOT in the release
# (no published result). Everything else as the DiNAT-Tiny instance config.
_base_ = './mask2former_dinat-tiny_8xb2-lsj-50e_coco.py'

# Official ImageNet-1K DiNAT-Small checkpoint (a local file: --cfg-options
# model.backbone.init_cfg.checkpoint=PATH).
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(in_channels=[96, 192, 384, 768]))
