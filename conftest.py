"""The repository root's conftest: pytest puts the folder of a root conftest on `sys.path` (its default `prepend`
import mode), so that the tests import the commands of `scripts/` as `scripts.chapters`, as `python -m scripts.chapters`
does from this folder. The fixtures are in tests/conftest.py."""
