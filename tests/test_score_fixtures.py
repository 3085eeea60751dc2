"""The small synthetic NSD that the score / submission / leaderboard / drift tests share (no tests here).

Import it where needed (`from test_score_fixtures import small_root_fixture  # noqa: F401`) and ask
for `small_root`. It is written once under the pytest base temp folder; later calls find it and return.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL = {"shared": 12, "missing_shared": 2, "sessions": 2}  # 8 test images per subject in nsd982


@pytest.fixture(scope="module", name="small_root")
def small_root_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nsdbench.nsd.synth import synthesize

    return synthesize(tmp_path_factory.getbasetemp() / "h4-small-nsd", seed=0, **SMALL)
