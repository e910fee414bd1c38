# UPerNet with a NAT-Mini backbone, ADE20K 512x512, 160k iterations, fp16.
# Everything else (recipe, schedule, optimiser, TTA) as the NAT-Tiny config.
_base_ = './nat-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'

# Official ImageNet-1K NAT-Mini checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/nat_mini.pth
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth'

model = dict(
    backbone=dict(
        arch='mini',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
