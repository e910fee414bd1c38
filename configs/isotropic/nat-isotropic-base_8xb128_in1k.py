# Isotropic NAT-Base (ViT-B widths: 16x16 patches, 12 NA blocks, 24 heads of 32 channels),
# ImageNet-1K classification from scratch, 300 epochs, 224x224, drop path 0.4.
# As the isotropic NAT-Small config, with the two differences of the release's
# nat_isotropic_base.yml: a 50-epoch warmup and a model EMA (evaluated in place of the weights; decay
# 0.9998, timm's default, as the yml sets no value). Release result: 81.6 top-1 (README.md).
# Official weights (to evaluate, see README.md; not used for training):
#   https://shi-labs.com/projects/dinat/checkpoints/isotropic/nat_isotropic_base_in1k_224.pth
_base_ = './nat-isotropic-small_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4),
    head=dict(in_channels=768))

warmup_epochs = 50
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=warmup_epochs)
]

# mmengine's EMA: momentum = 1 - decay
custom_hooks = [dict(type='EMAHook', momentum=2e-4, priority='ABOVE_NORMAL')]
