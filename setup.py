"""Two build steps pyproject.toml cannot say (the rest of the metadata lives there).

The long description is README.md with its relative links made absolute: the README
links to docs/ and shows docs/dashboard/*.png by relative paths, so that they work in
a clone and on any Git host, but PyPI shows the description away from the repository.
Links go to the repository's main branch (pyproject.toml's Homepage), images to its
raw files; tests/test_packaging.py checks the built metadata.

migrations/ (top level, the schema's only source) is installed as
taskworker/migrations/. Mapping it there with package-dir would make `pip install -e .`
use an import hook and warn; instead build_py copies the files for wheels, and an
editable install reads migrations/ from the checkout (taskworker/store/migrations.py
looks for the installed copy first). MANIFEST.in puts them in the sdist.
"""
import re
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_migrations(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib, "taskworker", "migrations")
        self.mkpath(str(target))
        for sql in sorted(Path("migrations").glob("*.sql")):
            self.copy_file(str(sql), str(target / sql.name))


def long_description() -> str:
    """README.md, its relative links and images pointed at the repository."""
    project = tomllib.loads(Path("pyproject.toml").read_text("utf-8"))["project"]
    home = project["urls"]["Homepage"]

    def absolute(m: re.Match[str]) -> str:
        image, text, target = m.group(1), m.group(2), m.group(3)
        if re.match(r"[a-z]+:|#", target):
            return m.group(0)
        # (blob: a folder's address redirects to its tree)
        return f"{image}[{text}]({home}/{'raw' if image else 'blob'}/main/{target})"

    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", absolute,
                  Path("README.md").read_text("utf-8"))


setup(cmdclass={"build_py": build_py_with_migrations},
      long_description=long_description(), long_description_content_type="text/markdown")
