"""The suite's own rules (tests/conftest.py): a skip is a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).parents[1] / "conftest.py"


def test_a_skipped_test_fails_the_suite(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text().replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(
        """
        import pytest

        def test_skips():
            pytest.skip("no route off loopback")

        @pytest.mark.skip(reason="not today")
        def test_marked():
            pass

        def test_passes():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1)  # a skip mark acts at setup
    result.stdout.fnmatch_lines(["*this suite never skips*no route off loopback*"])
    result.stdout.fnmatch_lines(["*this suite never skips*not today*"])
