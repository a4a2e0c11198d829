"""Build hook: the wheel ships the top-level `recipes/` as package data `cmkd_cli/recipes/`.

`recipes/` stays at the top of the repository, where people read it; `cmkd_cli.config`
looks in the installed `cmkd_cli/recipes/` first and falls back to the repository's
`recipes/` for a source checkout (editable install). Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RECIPES = Path(__file__).resolve().parent / "recipes"


class BuildPyWithRecipes(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads recipes/ in place
            return
        target = Path(self.build_lib) / "cmkd_cli" / "recipes"
        for src in sorted(RECIPES.rglob("*")):
            if src.is_file() and src.suffix in (".yaml", ".yml", ".md"):
                dst = target / src.relative_to(RECIPES)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


setup(cmdclass={"build_py": BuildPyWithRecipes})
