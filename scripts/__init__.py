"""The repository's commands beside the package, run from the repository root as modules (`python -m scripts.chapters`,
`python -m scripts.check_chapters`, `python -m scripts.html_edition`), so that `scripts.chapters` (the chapter list
and its execution) is imported as a module of this package, by them and by the tests, without editing `sys.path`. Not
part of the installed package."""
