"""The test suite (a package, so that `tests.conftest` is this folder even where a library installs its own `tests`)."""
