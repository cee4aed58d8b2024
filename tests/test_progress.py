"""The assignment's four-line progress block and its time format."""

from seqtrack_mlflow.train.progress import BLOCK_RE, ProgressLog, format_block, hms


def test_hms_formats_hours_minutes_seconds_with_unbounded_hours():
    assert hms(0) == "0:00:00"
    assert hms(155) == "0:02:35"
    assert hms(4 * 3600 + 17 * 60 + 28) == "4:17:28"
    assert hms(12 * 3600 + 3 * 60 + 9.4) == "12:03:09"
    assert hms(-3) == "0:00:00"


def test_block_is_exactly_the_spec_lines():
    block = format_block(1, 50, 7000, 50, 155, 4964, 15448)
    assert block == ("Epoch 1 : 50 / 7000 samples , \n"
                     "time for last 50 samples : 0:02:35 hours , \n"
                     "time since beginning : 1:22:44 hours , \n"
                     "time left to finish the epoch : 4:17:28 hours\n")
    assert BLOCK_RE.fullmatch(block)


def test_progress_log_appends_and_prints(tmp_path, capsys):
    log = ProgressLog(tmp_path / "training_log.txt")
    log.write(format_block(1, 64, 100, 64, 1, 1, 1))
    log.write(format_block(1, 100, 100, 36, 1, 2, 0))
    log.close()
    text = (tmp_path / "training_log.txt").read_text()
    assert capsys.readouterr().out == text
    assert [m.group(2) for m in BLOCK_RE.finditer(text)] == ["64", "100"]
    assert "".join(m.group(0) for m in BLOCK_RE.finditer(text)) == text
