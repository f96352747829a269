"""The test suite, a package so that tests/<package>/test_<module>.py mirrors jaxshare/<package>/<module>.py
and same-named files in different folders do not clash; helpers: tests.conftest, tests.tiny_model,
tests.cli_helpers. Cross-cutting tests (the API, errors, packaging, the repository, scale) sit at the top;
tests/slow/ groups the real-model files (all marked `slow`)."""
