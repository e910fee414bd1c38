"""The checkpoint module's state-dict side: unwrapping, table resizing, loading with a report (torch only)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from localattn.checkpoint import LoadReport, load_weights, resize_bias_table, resize_rpb, unwrap_state_dict


def tensors(*names):
    return {name: torch.full((2, ), float(i)) for i, name in enumerate(names)}


@pytest.mark.parametrize('wrap', [
    lambda sd: sd,
    lambda sd: {'state_dict': sd, 'meta': {'epoch': 3}},
    lambda sd: {'model': {'state_dict': sd}},
    lambda sd: {'module.' + k: v for k, v in sd.items()},
    lambda sd: {'state_dict': {'backbone.' + k: v for k, v in sd.items()} | tensors('neck.x', 'head.fc.w')},
    lambda sd: {'module.backbone.' + k: v for k, v in sd.items()},
])
def test_unwrap(wrap):
    sd = tensors('a.weight', 'b.bias')
    assert unwrap_state_dict(wrap(sd)) == sd


def test_unwrap_prefixes():
    sd = {'state_dict': tensors('backbone.a', 'neck.b', 'head.c') | {'step': 7}}
    assert list(unwrap_state_dict(sd, prefix='neck')) == ['b']
    assert list(unwrap_state_dict(sd, prefix='head.')) == ['c']
    assert list(unwrap_state_dict(sd, prefix='')) == ['backbone.a', 'neck.b', 'head.c']
    with pytest.raises(ValueError, match="no key of the checkpoint starts with prefix 'roi.'"):
        unwrap_state_dict(sd, prefix='roi')
    with pytest.raises(ValueError, match='not a state dict'):
        unwrap_state_dict([torch.zeros(1)])
    with pytest.raises(ValueError, match=r"holds no tensors \(keys: \['state_dict'\]\)"):
        unwrap_state_dict({'state_dict': [1, 2]})


def test_resize_tables():
    table = torch.randn(3, 13, 13)
    assert resize_rpb(table, 7) is table
    for kernel, mode in ((11, 'bicubic'), ((5, 9), 'bilinear')):
        size = tuple(2 * k - 1 for k in ((kernel, kernel) if isinstance(kernel, int) else kernel))
        want = F.interpolate(table[None], size=size, mode=mode, align_corners=False)[0]
        torch.testing.assert_close(resize_rpb(table, kernel, mode=mode), want)
    with pytest.raises(ValueError, match=r'\[heads, 2k-1, 2k-1\]'):
        resize_rpb(torch.zeros(3, 12, 12), 5)
    # Swin layout [(2w-1)^2, heads]: the same interpolation per head
    swin = table.flatten(1).T.contiguous()                     # [169, 3]
    torch.testing.assert_close(resize_bias_table(swin, 11), resize_rpb(table, 11).flatten(1).T)
    assert resize_bias_table(swin, 7).equal(swin)
    with pytest.raises(ValueError, match=r'\[\(2w-1\)\^2, heads\]'):
        resize_bias_table(torch.zeros(50, 3), 5)


class Toy(nn.Module):
    def __init__(self, kernel=3):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.rpb = nn.Parameter(torch.zeros(2, 2 * kernel - 1, 2 * kernel - 1))
        self.register_buffer('scale', torch.ones(2, 3))


def test_load_weights_report_and_strict(tmp_path):
    source = Toy(kernel=5)
    nn.init.normal_(source.rpb)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['backbone.extra'] = torch.zeros(1)
    state['backbone.scale'] = torch.zeros(3, 2)
    state['head.fc.weight'] = torch.zeros(1)
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': state}, path)
    target = Toy(kernel=3)
    report = load_weights(target, str(path))
    assert isinstance(report, LoadReport) and report.source == str(path)
    assert report.loaded == ['rpb', 'fc.weight', 'fc.bias']
    assert report.resized == ['rpb: (2, 9, 9) -> (2, 5, 5)']
    assert report.skipped == ['scale: checkpoint (3, 2) vs model (2, 3)']
    assert report.missing == ['scale'] and report.unexpected == ['extra'] and report.ignored == ['head.fc.weight']
    torch.testing.assert_close(target.rpb, resize_rpb(source.rpb.detach(), 3))
    assert not report.clean and 'skipped (shape mismatch): scale: checkpoint (3, 2)' in report.format()
    with pytest.raises(RuntimeError, match='does not match Toy exactly'):
        load_weights(Toy(kernel=3), str(path), strict=True)
    assert load_weights(Toy(kernel=5), source.state_dict(), strict=True).clean

    def adapt(sd, model_state, report):  # a layout mapping: rename, drop, declare new
        report.renamed['weight'] = 'fc.weight'
        report.new.append('fc')
        return {'rpb': sd['table']}

    report = load_weights(Toy(kernel=5), {'table': source.rpb.detach(), 'weight': torch.zeros(4, 4)},
                          adapt=adapt, tables=())
    assert report.loaded == ['rpb'] and report.missing == ['scale'] and report.new == ['fc']
