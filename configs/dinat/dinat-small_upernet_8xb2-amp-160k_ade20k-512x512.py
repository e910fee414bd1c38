# UPerNet, ADE20K 512x512, 160k iterations, fp16, with a DiNAT-Small backbone
# (NAT-Small with every other block dilated; DiNAT paper's ADE20K dilations).
# Everything else (recipe, schedule, optimiser, TTA) as the NAT-Small config.
_base_ = '../nat/nat-small_upernet_8xb2-amp-160k_ade20k-512x512.py'

# Official ImageNet-1K DiNAT-Small checkpoint, loaded as is (see README.md). A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_small_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth'

model = dict(
    backbone=dict(
        type='DiNAT',
        dilations='ade20k',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
