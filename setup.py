"""Package metadata of rambo_mmdet.

Installs into an environment that already has torch, mmcv and mmdet; it declares no dependencies
so that ``pip install -e .`` never rebuilds them. The pinned stack is requirements/stack.txt.
"""
from setuptools import find_packages, setup

setup(
    name='rambo_mmdet',
    version='0.1.0',
    description='RaMBO: blackbox-differentiated rank-based losses (AP, recall) for MMDetection 3.x',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['rambo_mmdet', 'rambo_mmdet.*']),
    python_requires='>=3.8',
    license='Apache-2.0',
)
