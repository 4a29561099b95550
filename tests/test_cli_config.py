"""Bad trainer options are refused before any training, with the reason."""
import subprocess
import sys

from tests.conftest import REPO, stripes, write_pngs


def test_doc_that_cannot_change_the_tapped_features_is_refused(tmp_path):
    write_pngs(tmp_path / "n", stripes(4))
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "fit", "--train", str(tmp_path / "n"), "--out",
                        str(tmp_path / "b"), "--taps", "b6", "--train-from", "block_13_expand"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "DOC would change nothing" in r.stderr and "block_6_expand_relu" in r.stderr
    assert not (tmp_path / "b").exists()
