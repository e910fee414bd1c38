# QnA-ViT-Small, ImageNet-1K classification from scratch, 300 epochs.
# Everything else (recipe, schedule, optimiser) as the QnA-ViT-Tiny config. Paper: 83.2 top-1.
_base_ = './qnavit-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.2))
