# Mask2Former with a DiNAT-Tiny backbone, COCO instance segmentation, large-scale jittering
# (1024x1024 crops), 50 epochs, fp32: a smaller-budget companion of the DiNAT-Large config, NOT in
# the release (no published result). Choices as the DiNAT-Tiny panoptic config (upstream's Swin-T
# recipe, drop path 0.3, kernel 7, COCO dilations).
_base_ = [
    'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
    './_base_/mask2former-paramwise.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-1K DiNAT-Tiny checkpoint (a local file: --cfg-options
# model.backbone.init_cfg.checkpoint=PATH).
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
