"""Install localattn: local-attention backbones (NAT, DiNAT, QnA-ViT) for OpenMMLab 2.x.

``pip install .`` installs the torch-only core (``localattn.ops``, ``localattn.layers``);
``pip install ".[mm]"`` adds the OpenMMLab packages the backbones need (mmcv's compiled ops are best
built as ``tools/setup_env.sh`` does, see README "Installation").
"""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    """Return the requirement lines of ``requirements/<name>.txt`` (comments and -r lines dropped)."""
    path = osp.join(HERE, 'requirements', f'{name}.txt')
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f
                if line.strip() and not line.startswith(('#', '-'))]


def read_version():
    namespace = {}
    with open(osp.join(HERE, 'projects', 'localattn', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='localattn',
    version=read_version(),
    description='Neighborhood Attention (NAT/DiNAT) and QnA-ViT backbones for mmdet, mmseg and mmpretrain',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    package_dir={'': 'projects'},
    packages=find_packages('projects'),
    # The C++ source of the native NA backend, compiled on first use (localattn/ops/na/backends/native.py).
    package_data={'localattn': ['ops/na/backends/*.cpp']},
    # The core (localattn.ops, localattn.layers) needs only torch and numpy; the backbones need [mm].
    install_requires=read_requirements('runtime'),
    extras_require={
        'mm': read_requirements('mminstall'),
        'tests': read_requirements('tests'),
        'optional': read_requirements('optional'),
    },
    zip_safe=False,
)
