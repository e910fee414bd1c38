# mmpretrain ImageClassifier on a tiny QnA-ViT (QnA stages + window self-attention stages),
# trained from scratch on the synthetic shapes classification split. Same data and schedule as
# nat-demo_synthetic-cls.py; override the data root the same way.
_base_ = ['./nat-demo_synthetic-cls.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='QnAViT',
        # widths 32/64/128/256: QnA blocks in stages 0-2, window self-attention in stages 2-3
        arch=dict(embed_dims=32, qna_depths=(1, 1, 1, 0), msa_depths=(0, 0, 1, 1),
                  qna_heads=(2, 4, 8, 16), msa_heads=(1, 2, 4, 8), window_sizes=(7, 7, 7, 4),
                  qna_kernel_size=3, mlp_ratio=2),
        drop_path_rate=0.0,
        out_indices=(3, )),
    head=dict(in_channels=256))

optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, custom_keys={
        'norm': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        '.rpb': dict(decay_mult=0.),
        '.attn_scale': dict(decay_mult=0.),
        '.query': dict(decay_mult=0.),
    }))
