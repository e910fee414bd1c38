# DiNAT_s-Large, ImageNet-1K fine-tuning at 224x224 of the release's ImageNet-22K model.
# Recipe as the DiNAT-Large 224 fine-tuning config (30 epochs, AdamW lr 5e-5, no warmup, linear decay,
# no Mixup / CutMix, fp32, 8 GPUs x 64): the release's dinat_s_large.yml was not among the sources of
# this repository, so its weight decay (1e-4 here) is DiNAT-Large's. Release result: 86.5 top-1.
_base_ = '../dinat/dinat-large_in22k-pre_8xb64_in1k.py'

# Official ImageNet-22K DiNAT_s-Large checkpoint: the backbone starts from it (its 21841-class head
# is dropped), the 1000-class head is new. To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_s_large_in22k_224.pth
# The fine-tuned result of the release (to evaluate, see README.md):
#   https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_large_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNATs',
        arch='large',
        kernel_size=7,
        dilations='imagenet',
        drop_path_rate=0.35,
        out_indices=(3, ),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
