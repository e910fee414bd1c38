# QnA-ViT-Tiny with 7x7 QnA windows, ImageNet-1K classification from scratch, 300 epochs.
# Everything else (recipe, schedule, optimiser) as the QnA-ViT-Tiny config. Paper: 82.0 top-1.
_base_ = './qnavit-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='tiny-7x7', drop_path_rate=0.05))
