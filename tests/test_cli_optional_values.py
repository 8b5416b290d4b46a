"""A flag whose value is optional does not swallow the next word when that word is not
its value: ``packets --until-failed-connect 'tcp port 80'`` keeps the filter expression.

No root: only the parser runs.
"""

from __future__ import annotations

import pytest

from podsight.cli.main import build_parser


@pytest.mark.parametrize(("argv", "delay", "expression"), [
    (["--until-failed-connect", "tcp port 80"], 2.0, ["tcp port 80"]),
    (["--until-failed-connect", "5s", "tcp port 80"], 5.0, ["tcp port 80"]),
    (["--until-failed-connect", "500ms", "tcp", "port", "80"], 0.5, ["tcp", "port", "80"]),
    (["tcp port 80", "--until-failed-connect"], 2.0, ["tcp port 80"]),
    (["--until-failed-connect", "--", "tcp"], 2.0, ["tcp"]),
    (["tcp"], None, ["tcp"]),
])
def test_until_failed_connect_leaves_the_expression(argv: list[str], delay: float | None,
                                                    expression: list[str]) -> None:
    ns = build_parser().parse_args(["packets", "-w", "out.pcapng", *argv])
    assert ns.until_failed_connect == delay
    assert ns.expression == expression


def test_a_bad_delay_is_still_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["packets", "-w", "o.pcapng", "--until-failed-connect",
                                   "99999999999999999999h", "tcp"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid duration" in err
