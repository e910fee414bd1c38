# Mask2Former with a DiNAT-Large backbone (11x11 neighbourhoods) pre-trained on ImageNet-22K, ADE20K
# semantic segmentation, 640x640 crops, 160k iterations, fp32.
# Release recipe (its mask2former/ configs, "the same settings as the original Swin-L experiments"):
# 100 queries, drop path 0.3, the Mask2Former dilations, AdamW lr 1e-4 wd 0.05 with the backbone at
# 0.1x the lr, poly decay, gradient clipping 0.01, no fp16, 16 images per batch (8 GPUs x 2).
# Release result: 58.1 mIoU multi-scale (README.md).
# Multi-scale + flip evaluation: `tools/test.py CONFIG CKPT --tta` (`tta_pipeline` of mmseg's
# 640x640 ADE20K base, ratios 0.5-1.75 with flips, i.e. the release's sizes 320-1120; `tta_model`
# from mmseg's runtime base). Model, pipelines and schedule come from mmseg's Swin-L Mask2Former
# config; only the backbone and the parameter groups change here.
_base_ = [
    'mmseg::mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py',
    './_base_/mask2former-paramwise.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-22K DiNAT-Large checkpoint with its 7x7 tables resized to 11x11 (the release's
# "11x11interp" file; the 7x7 dinat_large_in22k_224.pth also loads, the backbone resizes the tables
# itself). Downloaded once into torch hub's cache. To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_large_in22k_224_11x11interp.pth
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
