# Mask2Former with a DiNAT-Tiny backbone, COCO panoptic segmentation, large-scale jittering
# (1024x1024 crops), 50 epochs (368,750 iterations of 16 images), fp32: a smaller-budget companion of
# the DiNAT-Large config, NOT in the release (no published result).
# Choices: upstream's Swin-T Mask2Former recipe (mmdet's R-50 config: 100 queries, AdamW lr 1e-4
# wd 0.05, backbone lr x0.1, clipping 0.01, 8 GPUs x 2, steps at 327,778 / 355,092) with drop path
# 0.3 (as upstream's Swin-T), kernel 7 and the DiNAT COCO dilations (`'coco'`, made for 800-1333 px
# images, the size range of the 1024 px crops).
_base_ = [
    'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
    './_base_/mask2former-paramwise.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-1K DiNAT-Tiny checkpoint, loaded as is (downloaded once into torch hub's cache).
# To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_tiny_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch='tiny',
        kernel_size=7,
        dilations='coco',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(in_channels=[64, 128, 256, 512]))

# backbone lr x0.1, no decay on its `rpb` tables and norms, nor on the query / level embeddings
optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, **_base_.mask2former_paramwise_cfg))
