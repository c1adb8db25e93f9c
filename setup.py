"""Builds reid/_jpegroi (region-of-interest JPEG decoding, loaded with ctypes) when libjpeg's
headers and a C compiler are present; without them the package installs and decodes with Pillow.
Everything else about the distribution is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "reid._jpegroi",
            ["reid/_jpegroi.c"],
            libraries=["jpeg"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
