"""The one compiled part: gridpoints_protocol/_speedups.c (the record check's hot path).

Everything else about the package is in pyproject.toml. The extension is optional for the
package (gridpoints_protocol/fastcheck.py falls back to the pure-Python path without it), but
not for this repository's test run: tests/gridpoints_protocol/test_speedups.py requires it.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gridpoints_protocol._speedups",
            ["gridpoints_protocol/_speedups.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
