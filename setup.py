"""Build hooks that pyproject.toml cannot express.

cli.py sits at the repository's top level (docs/architecture.md) but must install as ``affbench.cli``: setuptools
maps packages to folders, not single modules to new names, so ``build_py`` adds it to the
``affbench`` package here. Editable installs are made in setuptools' "strict" mode, whose link tree is
built from ``build_py``'s outputs and so contains ``affbench/cli.py`` too; the default "lenient" mode
would map only package folders and miss it.
"""

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel


class BuildPyWithCli(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "affbench":
            modules.append(("affbench", "cli", "cli.py"))
        return modules


class StrictEditableWheel(editable_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.mode = "strict"


setup(cmdclass={"build_py": BuildPyWithCli, "editable_wheel": StrictEditableWheel})
