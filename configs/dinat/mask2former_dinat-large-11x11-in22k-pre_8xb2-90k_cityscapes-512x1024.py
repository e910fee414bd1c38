# Mask2Former with a DiNAT-Large backbone (11x11 neighbourhoods) pre-trained on ImageNet-22K,
# Cityscapes semantic segmentation, 512x1024 crops, 90k iterations, fp32.
# Release recipe as the ADE20K config (100 queries, drop path 0.3, the Mask2Former dilations, AdamW
# lr 1e-4 wd 0.05, backbone lr x0.1, clipping 0.01, 8 GPUs x 2). Release result: 84.5 mIoU
# multi-scale (README.md); `tools/test.py CONFIG CKPT --tta` (mmseg's Cityscapes `tta_pipeline`,
# ratios 0.5-1.75 with flips). Model, pipelines and schedule come from mmseg's Swin-L Mask2Former
# Cityscapes config; only the backbone and the parameter groups change here.
_base_ = [
    'mmseg::mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-512x1024.py',
    './_base_/mask2former-paramwise.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-22K DiNAT-Large checkpoint with 11x11 tables (see the ADE20K config). A local
# file: --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224_11x11interp.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch='large',
        kernel_size=11,
        dilations='mask2former',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(num_queries=100, in_channels=[192, 384, 768, 1536]))

# backbone lr x0.1, no decay on its `rpb` tables and norms, nor on the query / level embeddings
optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, **_base_.mask2former_paramwise_cfg))

# 8 GPUs x 2 images = 16 images per batch
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
