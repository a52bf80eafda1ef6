import json
import subprocess
import sys

from rakd.cli import main


def test_prep_command_prints_card_and_writes_data(tmp_path, capsys):
    code = main(["prep", "--config", "configs/smoke.yaml", "--set", f"run.root={tmp_path}",
                 "--set", "prep.generator.n_items=120"])
    assert code == 0
    out = capsys.readouterr().out
    assert "items       120" in out
    card = json.loads((tmp_path / "smoke" / "data" / "card.json").read_text())
    assert card["counts"]["total"] == 120


def test_user_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["prep", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    assert main(["prep", "--set", f"run.root={tmp_path}", "--set", "prep.source=jsonl", "--set", f"prep.path={bad}"]) == 2
    assert "bad.jsonl:1: field 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "tiny" / "data").exists()


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "rakd.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "prep" in result.stdout
