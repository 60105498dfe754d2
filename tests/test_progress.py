"""Progress bars are drawn only on a terminal: a log file or a pipe gets no bar lines."""
import io

from mimetic._progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_is_drawn_on_a_terminal():
    out = Terminal()
    for _ in progress_bar(range(3), enabled=True, file=out, desc="work"):
        pass
    assert "work" in out.getvalue() and "3/3" in out.getvalue()


def test_bar_is_quiet_in_a_file_or_pipe():
    out = io.StringIO()  # isatty() is False, as for a redirected stderr
    for _ in progress_bar(range(3), enabled=True, file=out, desc="work"):
        pass
    assert out.getvalue() == ""


def test_bar_off_when_not_asked_for():
    out = Terminal()
    for _ in progress_bar(range(3), enabled=False, file=out, desc="work"):
        pass
    assert out.getvalue() == ""
