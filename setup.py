"""One build step pyproject.toml cannot say (the metadata lives there).

migrations/ (top level, the schema's only source) is installed as
taskworker/migrations/. Mapping it there with package-dir would make `pip install -e .`
use an import hook and warn; instead build_py copies the files for wheels, and an
editable install reads migrations/ from the checkout (taskworker/store/migrations.py
looks for the installed copy first). MANIFEST.in puts them in the sdist.
"""
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


setup(cmdclass={"build_py": build_py_with_migrations})
