# UPerNet with a DiNAT_s-Base backbone, ADE20K 512x512, 160k iterations, fp16, drop path 0.3.
# Everything else (recipe, schedule, optimiser, TTA) as the DiNAT_s-Tiny config.
# Release result: 49.4 mIoU single-scale / 50.2 multi-scale (README.md).
_base_ = './dinats-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'

# Official ImageNet-1K DiNAT_s-Base checkpoint (a local file: --cfg-options
# model.backbone.init_cfg.checkpoint=PATH).
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
