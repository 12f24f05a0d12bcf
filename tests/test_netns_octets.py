"""Two test runs at once never get the same namespace subnet (a second make test picked the octet the first
had checked free, and its node-up refused the address)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns_octets import claim_octet

REPO = Path(__file__).resolve().parent.parent
HOLDER = '''
import sys, time
from pathlib import Path
from tests.netns_octets import claim_octet
print(claim_octet(90, 91, claims=Path(sys.argv[1])), flush=True)
time.sleep(30)
'''


def test_an_octet_another_process_holds_is_not_handed_out(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    theirs = -1
    try:
        assert holder.stdout is not None
        theirs = int(holder.stdout.readline())
        mine = claim_octet(90, 91, claims=tmp_path)
        assert {theirs, mine} == {90, 91}
        with pytest.raises(AssertionError, match=r"no free 10\.213\.x\.0/24 between 90 and 91"):
            claim_octet(90, 91, claims=tmp_path)  # one each: none left
    finally:
        holder.kill()
        holder.wait()
    assert claim_octet(90, 91, claims=tmp_path) == theirs  # a killed holder's claim went with it
