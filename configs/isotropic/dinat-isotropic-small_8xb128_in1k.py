# Isotropic DiNAT-Small: isotropic NAT-Small whose odd blocks use dilation 2. ImageNet-1K
# classification from scratch, 300 epochs, 224x224, drop path 0.1. Everything else (recipe, schedule,
# optimiser) as the isotropic NAT-Small config. Release result: 80.8 top-1 (README.md).
# Official weights (to evaluate, see README.md; not used for training):
#   https://shi-labs.com/projects/dinat/checkpoints/isotropic/dinat_isotropic_small_in1k_224.pth
_base_ = './nat-isotropic-small_8xb128_in1k.py'

model = dict(backbone=dict(type='IsotropicDiNAT'))
