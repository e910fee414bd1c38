# UPerNet with a QnA-ViT-Small backbone, ADE20K 512x512, 160k iterations, fp16.
# Everything else (recipe, schedule, optimiser, TTA) as the QnA-ViT-Tiny config.
_base_ = './qnavit-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'

# QnA-ViT ImageNet-1K checkpoint converted from the official Flax release with
#   python tools/model_converters/qnavit_flax_to_mmpretrain.py FLAX_CKPT checkpoints/qnavit-small_in1k.pth --arch small
# (an mmpretrain checkpoint: the backbone weights sit under `backbone.`). Local path; change it here
# or on the command line with --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/qnavit-small_in1k.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
