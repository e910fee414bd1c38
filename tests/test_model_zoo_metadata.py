"""Model-zoo metadata: ``model-index.yml`` -> one ``metafile.yml`` per config folder (OpenMMLab format).

* every config under ``configs/`` (``_base_`` folders excluded) has exactly one metafile entry, in its
  own folder's metafile, named after the file, and every entry names an existing config;
* every entry has the OpenMMLab fields (``In Collection`` of that metafile, ``Metadata`` with
  ``Training Data`` and ``Epochs`` or ``Iterations``, which tests/test_configs.py compares with the
  schedule of the loaded config), ``Results`` with
  ``Task`` / ``Dataset`` / ``Metrics`` and a ``Results Source`` (published numbers, not reproduced);
  ``Weights`` are the official release's URLs;
* the numbers of each folder README's tables (the metric columns of the row that links a config)
  equal the metafile's, in order, and every entry with results has such a row.

Only YAML and Markdown (no config is loaded, no model built): well under a second.
"""
import glob
import os.path as osp
import re

import pytest
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
OFFICIAL_URL = 'https://shi-labs.com/projects/'
# README table columns holding published metrics (case-sensitive: `Params` is not `AP`)
METRIC_HEADER = re.compile(r'mAP|mIoU|top-1|PQ|\bAP\b')
LINK = re.compile(r'\[([^\]]+\.py)\]\(([^)]+\.py)\)')
NUMBER = re.compile(r'(?<![\w.])\d+\.\d+(?![\w.])')


def _configs():
    paths = glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    return sorted(osp.relpath(p, ROOT) for p in paths
                  if '_base_' not in osp.relpath(p, CONFIG_DIR).split(osp.sep))


def _load_yaml(path):
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        return yaml.safe_load(f)


def _metafiles():
    index = _load_yaml('model-index.yml')
    return {path: _load_yaml(path) for path in index['Import']}


METAFILES = _metafiles()
ENTRIES = {m['Config']: (path, m) for path, meta in METAFILES.items() for m in meta['Models']}


def _metrics(entry):
    """The entry's published numbers in order (Results, then Metrics as written)."""
    return [float(v) for result in entry.get('Results', []) for v in result['Metrics'].values()]


def test_model_index_imports_one_metafile_per_config_folder():
    folders = {osp.dirname(c) for c in _configs()}
    assert {osp.dirname(p) for p in METAFILES} == folders
    assert all(osp.basename(p) == 'metafile.yml' for p in METAFILES)


def test_every_config_has_one_entry_and_every_entry_a_config():
    names = [m['Config'] for meta in METAFILES.values() for m in meta['Models']]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, duplicates
    configs = set(_configs())
    assert configs - set(names) == set(), 'configs without a metafile entry'
    assert set(names) - configs == set(), 'metafile entries naming no config'


@pytest.mark.parametrize('metafile', sorted(METAFILES))
def test_metafile_fields(metafile):
    meta = METAFILES[metafile]
    collections = {c['Name'] for c in meta['Collections']}
    for entry in meta['Models']:
        config = entry['Config']
        assert osp.dirname(config) == osp.dirname(metafile), config
        assert entry['Name'] == osp.splitext(osp.basename(config))[0]
        assert entry['In Collection'] in collections, entry['Name']
        metadata = entry['Metadata']
        assert metadata['Training Data'], entry['Name']
        schedule = {k: metadata[k] for k in ('Epochs', 'Iterations') if k in metadata}
        for key in ('Parameters', 'FLOPs'):
            assert key not in metadata or isinstance(metadata[key], int), (entry['Name'], key)
        if 'Results' in entry:
            assert entry.get('Results Source'), f'{entry["Name"]}: say where the numbers come from'
            assert schedule, entry['Name']
            for result in entry['Results']:
                assert result['Task'] and result['Dataset'] and result['Metrics'], entry['Name']
        else:
            assert 'Results Source' not in entry
        if 'Weights' in entry:
            assert entry['Weights'].startswith(OFFICIAL_URL), entry['Weights']


def _readme_rows(readme):
    """{config path: [numbers of the metric columns]} for every table row linking a config."""
    rows, header = {}, None
    with open(readme, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line.startswith('|'):
                header = None
                continue
            cells = [c.strip() for c in line.strip('|').split('|')]
            if header is None:
                header = cells
                continue
            if set(line) <= set('|-: '):
                continue
            link = LINK.search(line)
            if not link:
                continue
            numbers = []
            for title, cell in zip(header, cells):
                if METRIC_HEADER.search(title):
                    numbers += [float(n) for n in NUMBER.findall(LINK.sub('', cell))]
            path = osp.relpath(osp.normpath(osp.join(osp.dirname(readme), link.group(2))), ROOT)
            assert path not in rows, f'{readme}: {path} listed twice with numbers'
            rows[path] = numbers
    return rows


@pytest.mark.parametrize('metafile', sorted(METAFILES))
def test_readme_numbers_match_metafile(metafile):
    readme = osp.join(ROOT, osp.dirname(metafile), 'README.md')
    entries = METAFILES[metafile]['Models']
    if not osp.exists(readme):
        assert not any('Results' in e for e in entries), f'{metafile}: results but no README'
        return
    rows = _readme_rows(readme)
    for entry in entries:
        config = entry['Config']
        if 'Results' in entry:
            assert config in rows, f'{readme} lists no row for {config}'
        if config in rows:
            assert rows[config] == _metrics(entry), (config, rows[config], _metrics(entry))
    unknown = set(rows) - {e['Config'] for e in entries}
    assert not unknown, f'{readme} links configs of no metafile entry: {unknown}'
