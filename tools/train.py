#!/usr/bin/env python
"""Train a model from an mmdet, mmseg or mmpretrain config.

    python tools/train.py --help
"""
import os.path as osp
import sys

try:
    import localattn  # noqa: F401  registers the backbones and the safe checkpoint loader
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'projects'))
    import localattn  # noqa: F401

from localattn.cli import train

if __name__ == '__main__':
    train()
