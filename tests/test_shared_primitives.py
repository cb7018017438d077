import pytest
import torch

from cococo_core.attention import attention, attention_backend, merge_heads, split_heads
from cococo_core.hooks import Cancelled, check_cancelled
from cococo_core.windows import blend_windows, plan_windows, window_weights


@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_backends_match_naive_reference(backend):
    q, k, v = (torch.randn(3, 4, 10, 8, dtype=torch.float64) for _ in range(3))
    k, v = k[:, :, :7], v[:, :, :7]
    expected = attention(q, k, v, backend="naive")
    with attention_backend(backend):
        torch.testing.assert_close(attention(q, k, v), expected)


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="naive"):
        with attention_backend("flash3"):
            pass


def test_head_split_round_trip():
    x = torch.randn(2, 5, 24)
    assert split_heads(x, 3).shape == (2, 3, 5, 8)
    torch.testing.assert_close(merge_heads(split_heads(x, 3)), x)


def test_cancel_hook():
    check_cancelled(None)
    check_cancelled(lambda: False)
    with pytest.raises(Cancelled):
        check_cancelled(lambda: True)


def test_windows_cover_every_frame_with_overlap():
    windows = plan_windows(40, 16, 4)
    assert windows[0][0] == 0 and windows[-1][-1] == 39
    assert all(len(w) == 16 for w in windows)
    assert set().union(*map(set, windows)) == set(range(40))
    for a, b in zip(windows, windows[1:]):
        assert a[-1] - b[0] + 1 >= 4
    assert plan_windows(10, 16, 4) == [list(range(10))]


@pytest.mark.parametrize("args", [(0, 16, 4), (10, 0, 0), (10, 4, 4), (10, 4, -1)])
def test_bad_window_settings(args):
    with pytest.raises(ValueError):
        plan_windows(*args)


def test_weights_positive_and_ramped():
    weights = window_weights(plan_windows(30, 12, 6))
    assert all((w > 0).all() for w in weights)
    assert weights[0][0] == 1 and weights[0][-1] < 1 and weights[-1][-1] == 1


def test_blend_single_window_is_identity_and_constant_is_preserved():
    x = torch.randn(1, 4, 8, 3, 3)
    torch.testing.assert_close(blend_windows(8, plan_windows(8, 16, 4), lambda idx: x[:, :, idx]), x)
    # a per-frame quantity that every window predicts identically is reproduced exactly
    y = torch.randn(1, 4, 50, 3, 3)
    torch.testing.assert_close(blend_windows(50, plan_windows(50, 16, 4), lambda idx: y[:, :, idx]), y)


def test_every_public_name_resolves_and_unknown_names_fail():
    import cococo_core

    for name in cococo_core.__all__:
        assert getattr(cococo_core, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        cococo_core.no_such_name


def test_blend_keeps_float64_precision():
    y = torch.randn(1, 2, 30, 2, 2, dtype=torch.float64)
    blended = blend_windows(30, plan_windows(30, 8, 3), lambda idx: y[:, :, idx])
    assert blended.dtype == torch.float64
    torch.testing.assert_close(blended, y, rtol=0, atol=1e-12)


def test_cli_lists_every_command_and_each_has_help(capsys):
    from cococo_core.cli import COMMANDS, main

    with pytest.raises(SystemExit) as top:
        main(["--help"])
    assert top.value.code == 0
    listing = capsys.readouterr().out
    for command in COMMANDS:
        assert command in listing
        with pytest.raises(SystemExit) as sub:
            main([command, "--help"])
        assert sub.value.code == 0 and "usage: python -m cococo_core " + command in capsys.readouterr().out
    with pytest.raises(SystemExit) as unknown:
        main(["no-such-command"])
    assert unknown.value.code == 2


def test_commands_live_in_the_cli_package_and_the_root_holds_only_the_library():
    import pkgutil

    import cococo_core
    from cococo_core import cli

    command_modules = {info.name for info in pkgutil.iter_modules(cli.__path__)}
    assert command_modules == {name.replace("-", "_") for name in cli.COMMANDS} | {"args"}
    root_modules = {info.name for info in pkgutil.iter_modules(cococo_core.__path__)}
    assert not {name for name in root_modules if name.startswith("cli_")}, root_modules
