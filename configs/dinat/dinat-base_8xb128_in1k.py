# DiNAT-Base, ImageNet-1K classification from scratch, 300 epochs, 224x224
# (NAT-Base with every other block dilated; DiNAT paper's ImageNet dilations at 224 px).
# Everything else (recipe, schedule, optimiser) as the NAT-Base config (mmpretrain's Swin recipe).
_base_ = '../nat/nat-base_8xb128_in1k.py'

model = dict(backbone=dict(type='DiNAT', dilations='imagenet'))
