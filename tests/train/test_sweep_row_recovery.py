"""A damaged ``row.json`` does not strand a sweep (issue 14, second pass): the point is run
again from its run folder (its stored result: nothing retrained), with a warning naming the
file; the rewritten row equals the original."""
import json

import pytest

from mimetic.train.sweep import run_sweep

from .test_sweep import tiny_factory, write_toml
from .test_sweep_safety import SMALL

RUN = "copy-default-Mamba2-d2-L2-s0"


def sweep(tmp_path):
    return run_sweep(write_toml(tmp_path / "s.toml", SMALL), tmp_path / "out", progress=False, plot=False,
                     model_factory=tiny_factory)


@pytest.mark.parametrize("damage", ["{torn", "[1, 2]", "\xff\xfe"], ids=["torn", "list", "binary"])
def test_damaged_row_is_rebuilt_from_the_run(tmp_path, damage):
    first = sweep(tmp_path)
    row_file = tmp_path / "out" / "runs" / RUN / "row.json"
    row_file.write_bytes(damage.encode("latin-1"))
    mtime = (tmp_path / "out" / "runs" / RUN / "result.json").stat().st_mtime_ns
    with pytest.warns(UserWarning, match=rf"{RUN}/row.json is unreadable .*running the point again"):
        second = sweep(tmp_path)
    assert second.skipped == 0 and len(second.rows) == 1
    keep = lambda r: {k: v for k, v in r.items() if k != "elapsed_s"}  # noqa: E731
    assert keep(second.rows[0]) == keep(first.rows[0])
    assert keep(json.loads(row_file.read_text())) == keep(first.rows[0])
    # nothing was retrained: the run's result is the one written the first time
    assert (tmp_path / "out" / "runs" / RUN / "result.json").stat().st_mtime_ns == mtime
