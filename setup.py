"""Builds the optional C kernels of the entropy stages and of dependent quantization's search; everything else
is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and decoding uses the portable
kernels (same output, slower) and dependent quantization searches in numpy (same codes, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("nncodec.coding._rans_native", ["nncodec/coding/_rans_native.c"],
                             extra_compile_args=["-O3"], optional=True),
                   Extension("nncodec.quant._trellis_native", ["nncodec/quant/_trellis_native.c"],
                             extra_compile_args=["-O3", "-pthread"], extra_link_args=["-pthread"],
                             optional=True)])
