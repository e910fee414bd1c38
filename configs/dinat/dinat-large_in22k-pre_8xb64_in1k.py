# DiNAT-Large (kernel 7), ImageNet-1K fine-tuning at 224x224 of the release's ImageNet-22K model.
# Release recipe (its classification/configs/dinat_large.yml): 30 epochs, AdamW lr 5e-5, weight decay
# 1e-4, no warmup, linear decay (per iteration), no Mixup / CutMix, fp32, 64 images per GPU (8 GPUs
# assumed: the GPU count is not stated). Not stated there, taken from the NAT configs (mmpretrain's
# Swin recipe): the 224 px augmentation (RandAugment, random erasing), label smoothing 0.1 and no
# weight decay on norms, biases, 1-D parameters and `rpb` tables; evaluation resizes the short side
# to 256 and centre-crops 224. Release result: 86.6 top-1 (README.md).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['localattn'], allow_failed_imports=False)

# Official ImageNet-22K DiNAT-Large checkpoint: the backbone starts from it (its 21841-class head is
# dropped), the 1000-class head is new. To use a local file instead:
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/dinat_large_in22k_224.pth
# The fine-tuned result of the release (to evaluate, see README.md):
#   https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_224.pth
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth'

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='DiNAT',
        arch='large',
        kernel_size=7,
        dilations='imagenet',
        drop_path_rate=0.35,
        out_indices=(3, ),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1536,
        init_cfg=None,  # initialised by the model-level TruncNormal below
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
    ])

# 8 GPUs x 64 images = 512 images per batch (auto_scale_lr base_batch_size=512).
train_dataloader = dict(batch_size=64)
auto_scale_lr = dict(base_batch_size=512)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=5e-5, weight_decay=1e-4, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'.rpb': dict(decay_mult=0.0)}))

# 30 epochs, no warmup, linear decay to 0 per iteration.
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1.0,
        end_factor=0.0,
        by_epoch=True,
        begin=0,
        end=30,
        convert_to_iter_based=True)
]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=1)
