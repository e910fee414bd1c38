# NAT-Mini, ImageNet-1K classification from scratch, 300 epochs, 224x224.
# Everything else (recipe, schedule, optimiser) as the NAT-Tiny config.
_base_ = './nat-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='mini', drop_path_rate=0.2),
    head=dict(in_channels=512))
