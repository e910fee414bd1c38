# DiNAT-Large with 11x11 neighbourhoods, ImageNet-1K fine-tuning at 384x384 of the release's
# ImageNet-22K model whose 7x7 relative-position tables were resized bicubically to 11x11 (its
# "11x11interp" checkpoint). Recipe as the kernel-7 384 config (the release uses one yml,
# dinat_large_384.yml, for both), but the 224-px dilations (`dilations='imagenet'`), as the release's
# `dinat_large_384_11x11` model: 11 x 13 would exceed the 96-token side of stage 1 at 384 px.
# Release result: 87.5 top-1 (README.md).
_base_ = './dinat-large_in22k-pre_8xb64_in1k-384px.py'

# Official ImageNet-22K DiNAT-Large checkpoint with 11x11 tables. The kernel-7 file
# (dinat_large_in22k_224.pth) also loads: the backbone resizes the tables itself. A local file:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_large_in22k_224_11x11interp.pth
# The fine-tuned result of the release (to evaluate, see README.md):
#   https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384_11x11.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224_11x11interp.pth'

model = dict(
    backbone=dict(
        kernel_size=11,
        dilations='imagenet',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
