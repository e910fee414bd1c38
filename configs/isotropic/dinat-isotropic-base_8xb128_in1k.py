# Isotropic DiNAT-Base: isotropic NAT-Base whose odd blocks use dilation 2. ImageNet-1K
# classification from scratch, 300 epochs, 224x224, drop path 0.4, 50-epoch warmup, model EMA.
# Everything else as the isotropic NAT-Base config (the release's dinat_isotropic_base.yml equals
# nat_isotropic_base.yml).
# Release result: 82.1 top-1 (README.md).
# Official weights (to evaluate, see README.md; not used for training):
#   https://shi-labs.com/projects/dinat/checkpoints/isotropic/dinat_isotropic_base_in1k_224.pth
_base_ = './nat-isotropic-base_8xb128_in1k.py'

model = dict(backbone=dict(type='IsotropicDiNAT'))
