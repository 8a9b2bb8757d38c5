"""The missing-peer rule of tests/peers.py: skip locally, fail under ``CI=true``.

Each test sets ``CI`` itself (monkeypatch) and asks for a program or module whose
name cannot exist, so the outcome does not depend on the machine it runs on.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from peers import needs_binary, require_binary, require_file, require_module

NO_SUCH_PROGRAM = "pyserve-no-such-peer-\N{SNOWMAN}"  # no package installs this
NO_SUCH_MODULE = "pyserve_no_such_peer_module"


@pytest.fixture
def ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)


@pytest.mark.usefixtures("ci")
def test_a_missing_program_fails_under_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match=f"{NO_SUCH_PROGRAM} is not installed "
                       r"\(Debian package: somepkg\); under CI=true"):  # fmt: skip
        require_binary(NO_SUCH_PROGRAM, "somepkg")


@pytest.mark.usefixtures("local")
def test_a_missing_program_skips_locally() -> None:
    with pytest.raises(pytest.skip.Exception, match=r"\(Debian package: somepkg\)$"):
        require_binary(NO_SUCH_PROGRAM, "somepkg")


@pytest.mark.parametrize("value", ["false", "1", "TRUE", ""])
def test_only_ci_equal_to_true_makes_a_missing_program_fail(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        require_binary(NO_SUCH_PROGRAM, "somepkg")


@pytest.mark.usefixtures("ci")
def test_an_installed_program_is_found_by_its_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    program = tmp_path / "pyserve-peer-probe"
    program.write_text("#!/bin/sh\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    assert require_binary("pyserve-peer-probe", "somepkg") == str(program)


@pytest.mark.usefixtures("ci")
def test_the_decorator_fails_a_test_whose_program_is_missing_under_ci() -> None:
    ran = []

    @needs_binary(NO_SUCH_PROGRAM, "somepkg")
    def test(value: int) -> None:
        ran.append(value)

    with pytest.raises(pytest.fail.Exception, match=NO_SUCH_PROGRAM):
        test(1)
    assert ran == []


@pytest.mark.usefixtures("local")
def test_the_decorator_skips_a_test_whose_program_is_missing_locally() -> None:
    @needs_binary(NO_SUCH_PROGRAM, "somepkg")
    def test() -> None:
        raise AssertionError("must not run")

    with pytest.raises(pytest.skip.Exception, match=NO_SUCH_PROGRAM):
        test()


@pytest.mark.usefixtures("ci")
def test_the_decorator_runs_the_test_with_its_arguments_when_the_program_exists() -> None:
    ran = []

    @needs_binary("sh", "dash")
    def test(value: int, *, other: str) -> None:
        ran.append((value, other))

    test(1, other="x")
    assert ran == [(1, "x")]
    assert test.__name__ == "test"  # pytest collects the wrapper by the test's own name


@pytest.mark.usefixtures("ci")
def test_a_missing_module_fails_under_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match=f"{NO_SUCH_MODULE} is not installed"):
        require_module(NO_SUCH_MODULE, "some extra")


@pytest.mark.usefixtures("local")
def test_a_missing_module_skips_locally() -> None:
    with pytest.raises(pytest.skip.Exception, match=r"\(some extra\)$"):
        require_module(NO_SUCH_MODULE, "some extra")


@pytest.mark.usefixtures("ci")
def test_an_installed_module_is_returned() -> None:
    assert require_module("os.path", "the standard library") is os.path


@pytest.mark.usefixtures("ci")
def test_a_missing_file_fails_under_ci(tmp_path: Path) -> None:
    missing = str(tmp_path / "ngx_missing_module.so")
    with pytest.raises(pytest.fail.Exception, match="Debian package: somepkg"):
        require_file(missing, "somepkg")


@pytest.mark.usefixtures("local")
def test_a_missing_file_skips_locally(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="is missing"):
        require_file(str(tmp_path / "absent"), "somepkg")


def test_a_module_that_needs_a_missing_peer_fails_collection_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module-level require_module (as the RESP tests' redis-py) fails the run in CI."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # for ``import peers``
    pytester.makepyfile(test_needs_peer=f"""
        from peers import require_module
        require_module({NO_SUCH_MODULE!r}, "some extra")

        def test_never_collected():
            pass
    """)  # fmt: skip
    monkeypatch.setenv("CI", "true")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(errors=1)
    monkeypatch.delenv("CI")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(skipped=1)
