"""scripts/readme_tour.py: the README's tour is parsed, every line gets its size options, the options are
the subcommand's own and take effect, and a line it does not know fails (nothing is run here)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer

from vespo_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_tour", ROOT / "scripts" / "readme_tour.py")
tour_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tour_script)

README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = tour_script.tour(README)
STEP_PATH = re.compile(r"^(.+)/checkpoints/step-\d+$")


def _params(command) -> dict:
    """The subcommand's parameters after click parses the line with its size options."""
    group = typer.main.get_command(app)
    sub = group.commands[command.argv[0]]
    return sub.make_context(command.argv[0], [*command.argv[1:], *command.extra]).params


def test_the_real_readme_tour_parses():
    subcommands = [c.argv[0] for c in COMMANDS]
    assert subcommands[0] == "presets" and {"rollout", "train", "eval", "compare", "probe"} <= set(subcommands)
    lines = README.splitlines()
    for c in COMMANDS:  # each starts on its README line, as written there
        assert lines[c.line - 1].startswith(f"vespo {c.argv[0]}")
    compare = next(c for c in COMMANDS if c.argv[0] == "compare")  # a `\`-continued line, joined
    assert compare.argv[-2:] == ("--out", "runs/compare") and "#" not in " ".join(compare.argv)


def test_every_line_gets_its_size_options():
    for c in COMMANDS:
        writes = c.argv[0] not in ("presets", "inspect") and not {"--resume", "--dry-run"} & set(c.argv)
        assert bool(c.extra) == writes, c
        params = _params(c)  # the options are the subcommand's own (click raises otherwise)
        for key, value in {"num_prompts": 2, "limit": 2, "k": 1, "seeds": 1, "prompts": 2}.items():
            if f"--{key.replace('_', '-')}" in c.extra:
                assert params[key] == value, (c, key)  # the appended value wins over the README's


def test_a_run_a_later_line_names_keeps_its_steps():
    named = {m.group(1) for c in COMMANDS for a in c.argv if (m := STEP_PATH.match(a))}
    assert named  # the tour evaluates a checkpoint of one of its runs
    for c in COMMANDS:
        if c.argv[0] == "train" and {tour_script._option(c.argv, "--out", "--resume")} & named:
            assert "trainer.steps=2" not in c.extra, c
    assert any("trainer.steps=2" in c.extra for c in COMMANDS if c.argv[0] == "train")


def test_continued_lines_and_comments():
    text = "## A tour\n\n```bash\nvespo presets   # list\n    # a comment line\nvespo probe -K 0 \\\n  --out x\n```\n"
    assert tour_script.tour_lines(text) == [(4, ("vespo", "presets")), (6, ("vespo", "probe", "-K", "0", "--out", "x"))]


@pytest.mark.parametrize(
    "line, message",
    [("vespo frobnicate --x 1", "`vespo frobnicate`: no size options"), ("make demo", "expected `vespo <subcommand>")],
)
def test_a_line_it_does_not_know_fails(tmp_path, capsys, line, message):
    readme = tmp_path / "README.md"
    readme.write_text(f"## A tour\n\n```bash\nvespo presets\n{line}\n```\n")
    with pytest.raises(ValueError, match=re.escape("README.md:5: ")):
        tour_script.tour(readme.read_text())
    assert tour_script.main(["--readme", str(readme), "--dry"]) == 2
    assert message in capsys.readouterr().err


def test_dry_lists_every_command_with_its_options(capsys):
    assert tour_script.main(["--dry"]) == 0
    out = capsys.readouterr().out
    assert out.count("README:") == len(COMMANDS) and "+ --num-prompts 2" in out
    assert tour_script.main(["--dry", "--only", "1"]) == 2  # no tour command on README line 1
