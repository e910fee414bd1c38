# DiNAT_s-Large, ImageNet-1K fine-tuning at 384x384 of the release's ImageNet-22K (224 px) model,
# with the 384-px dilations (`dilations='imagenet-384'`).
# Release recipe (its classification/configs/dinat_s_large_384.yml): as the DiNAT-Large 384 config
# (30 epochs, AdamW lr 5e-5, no warmup, linear decay, no Mixup / CutMix, fp32, crop ratio 1.0,
# 8 GPUs x 64) but weight decay 1e-5. Release result: 87.4 top-1 (README.md).
_base_ = '../dinat/dinat-large_in22k-pre_8xb64_in1k-384px.py'

# Official ImageNet-22K DiNAT_s-Large checkpoint: the backbone starts from it (its 21841-class head
# is dropped), the 1000-class head is new. To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_s_large_in22k_224.pth
# The fine-tuned result of the release (to evaluate, see README.md):
#   https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_large_in1k_384.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNATs',
        arch='large',
        kernel_size=7,
        dilations='imagenet-384',
        drop_path_rate=0.35,
        out_indices=(3, ),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))

optim_wrapper = dict(optimizer=dict(weight_decay=1e-5))
