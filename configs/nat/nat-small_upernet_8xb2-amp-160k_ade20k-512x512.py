# UPerNet with a NAT-Small backbone, ADE20K 512x512, 160k iterations, fp16.
# Everything else (recipe, schedule, optimiser, TTA) as the NAT-Tiny config.
_base_ = './nat-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'

# Official ImageNet-1K NAT-Small checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_small.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
