"""The test lanes: a test without a lane cannot be collected, and a `cuda` test is skipped, with the reason, where
torch sees no CUDA device."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.unit

pytest_plugins = ("pytester",)

MARKERS = "[pytest]\nmarkers =\n    unit: u\n    e2e: e\n    server: s\n    cuda: c\naddopts = --strict-markers\n"


@pytest.fixture
def project(pytester):
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makeini(MARKERS)
    return pytester


def test_an_unmarked_test_fails_collection_and_is_named(project):
    project.makepyfile(test_x="import pytest\n\n@pytest.mark.unit\ndef test_marked():\n    pass\n\n"
                              "def test_forgotten():\n    pass\n")
    result = project.runpytest_inprocess("-m", "unit")   # not silently left out of the selected lane
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*every test must be marked with one of the lanes unit, e2e, server, cuda*",
                                 "*test_x.py::test_forgotten*"])
    assert "test_marked" not in result.stderr.str()


def test_a_module_mark_covers_every_test_of_the_file(project):
    project.makepyfile(test_y="import pytest\n\npytestmark = pytest.mark.e2e\n\ndef test_a():\n    pass\n")
    result = project.runpytest_inprocess("-m", "e2e")
    result.assert_outcomes(passed=1)


def test_a_cuda_test_runs_only_where_torch_sees_a_device(project):
    project.makepyfile(test_z="import pytest, torch\n\n@pytest.mark.cuda\ndef test_gpu():\n"
                              "    assert torch.cuda.is_available()\n")
    result = project.runpytest_inprocess("-rs")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*needs a CUDA device; torch.cuda.is_available() is False here*"])
