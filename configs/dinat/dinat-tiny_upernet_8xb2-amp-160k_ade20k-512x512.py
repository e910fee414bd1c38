# UPerNet, ADE20K 512x512, 160k iterations, fp16, with a DiNAT-Tiny backbone
# (NAT-Tiny with every other block dilated; DiNAT paper's ADE20K dilations).
# Everything else (recipe, schedule, optimiser, TTA) as the NAT-Tiny config.
_base_ = '../nat/nat-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'

# Official ImageNet-1K DiNAT-Tiny checkpoint, as downloaded (local path, see README.md).
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/dinat-tiny_in1k.pth'

model = dict(
    backbone=dict(
        type='DiNAT',
        dilations='ade20k',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
