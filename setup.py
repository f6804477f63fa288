"""ipython1: interactive parallel and distributed computing on Twisted and Foolscap."""

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel


class editable_wheel_with_plugins(editable_wheel):
    """Make `pip install -e .` put the project root on sys.path.

    Twisted finds plugins by looking for twisted/plugins/ in each sys.path
    entry; the default (strict) editable mode maps packages through an import
    hook instead, which Twisted's plugin discovery cannot see.
    """

    def finalize_options(self) -> None:
        super().finalize_options()
        self.mode = self.mode or "compat"

setup(
    name="ipython1",
    version="0.1.0",
    description="Interactive parallel and distributed computing: a controller, "
                "IPython engines and clients over Twisted and Foolscap.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=["ipython1", "ipython1.client", "ipython1.cluster", "ipython1.common",
              "ipython1.controller", "ipython1.engine", "ipython1.kernel", "ipython1.scripts",
              "ipython1.transport", "ipython1.transport.data", "twisted.plugins"],
    package_data={"twisted": ["plugins/ipython1_plugins.py"],
                  "ipython1.controller": ["static/*"]},
    install_requires=[
        "twisted>=23.8",
        "foolscap>=23.11",
        "zope.interface>=6",
        "ipython>=8.12",
        "cloudpickle>=3",
        "numpy>=1.24",
        "tqdm>=4.66",
        "psutil>=5.9",
        "msgpack>=1.0",
        "cryptography>=41",  # AES-GCM and HKDF of the sealed data path (foolscap needs it too)
    ],
    extras_require={
        "mpi": ["mpich", "mpi4py>=4"],
        "data": ["zarr>=2.16", "h5py>=3.8"],
        "test": ["pytest>=8", "hypothesis>=6", "pexpect>=4.9", "pytest-timeout>=2.3",
                 "playwright>=1.40", "zarr>=2.16", "h5py>=3.8", "nbclient>=0.10",
                 "ipykernel>=6.29"],
    },
    cmdclass={"editable_wheel": editable_wheel_with_plugins},
    entry_points={
        "console_scripts": [
            "ipcontroller = ipython1.scripts.ipcontroller:main",
            "ipengine = ipython1.scripts.ipengine:main",
            "ipcluster = ipython1.scripts.ipcluster:console",
            "ipython1-shell = ipython1.client.shell:main",
        ],
    },
)
