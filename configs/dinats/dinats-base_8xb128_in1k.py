# DiNAT_s-Base, ImageNet-1K classification from scratch, 300 epochs, 224x224, drop path 0.5.
# Everything else (recipe, schedule, optimiser) as the DiNAT_s-Tiny config.
# Release result: 83.8 top-1 (README.md).
# Official weights (to evaluate, see README.md; not used for training):
#   https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth
_base_ = './dinats-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5),
    head=dict(in_channels=1024))
