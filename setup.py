from setuptools import find_packages, setup

setup(
    name="datafree",
    version="0.1.0",
    description="A benchmark toolkit for data-free knowledge distillation",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the reference rows that use real data live in baselines/ and import as datafree.baselines
    packages=find_packages(include=["datafree", "datafree.*"]) + ["datafree.baselines"],
    package_dir={"datafree.baselines": "baselines"},
    package_data={
        "datafree": ["configs/*.yaml", "configs/*.json", "configs/methods/*.yaml"],
        "datafree.baselines": ["*.yaml"],
    },
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=0.9",
        "numpy",
        "pandas",
        "matplotlib",
        "pyyaml",
        "kornia>=0.7",
        "tqdm",
        "scikit-learn",
        "pillow",
    ],
    extras_require={
        # ruff and import-linter pinned: a new release may format or lint otherwise (make test runs both)
        "test": ["pytest>=7", "pytest-randomly>=3.15", "tensorboard", "wandb", "ruff==0.17.6", "import-linter==2.17"],
        "slurm": ["submitit>=1.5"],
        "tensorboard": ["tensorboard"],
        "wandb": ["wandb"],  # log=wandb
    },
    entry_points={"console_scripts": ["datafree=datafree.cli:main"]},
)
