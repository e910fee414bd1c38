# DiNAT-Mini, ImageNet-1K classification from scratch, 300 epochs, 224x224
# (NAT-Mini with every other block dilated; DiNAT paper's ImageNet dilations at 224 px).
# Everything else (recipe, schedule, optimiser) as the NAT-Mini config (mmpretrain's Swin recipe).
_base_ = '../nat/nat-mini_8xb128_in1k.py'

model = dict(backbone=dict(type='DiNAT', dilations='imagenet'))
