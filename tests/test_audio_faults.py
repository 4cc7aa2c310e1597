"""Bad audio (issue 16): a file whose header does not parse is skipped and reported, never decoded by guessing;
non-finite audio is an error naming the problem; audio shorter than one frame still embeds."""
from __future__ import annotations

import pandas as pd
import pytest
import soundfile as sf

import audio
from data import read_manifest
from tests.test_cache import run
from tests.test_datasets import write, write_gtzan_au


def damage_header(path) -> None:
    """Overwrite the first 4 bytes (an AU file's '.snd' magic, a WAV's 'RIFF'): a flipped block on disk."""
    data = bytearray(path.read_bytes())
    data[:4] = b"\x00\x13\x37\x00"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("ext", [".au", ".snd", ".vox"])
def test_a_damaged_header_is_an_error_not_a_guess(tmp_path, ext):
    """libsndfile reads an .au/.snd whose header does not parse as headerless u-law at 8000 Hz (and .vox as
    VOX ADPCM): noise of the wrong length. load_audio refuses it."""
    path = write(tmp_path / f"clip{ext}", sr=22050, format="AU")
    damage_header(path)
    assert sf.info(str(path)).format == "RAW"  # what libsndfile would have decoded
    with pytest.raises(audio.AudioError, match=rf"clip\{ext}: header does not parse .*would guess headerless "
                                               r"\w+ at 8000 Hz .*not decoded"):
        audio.load_audio(path)


def test_gtzan_au_with_a_damaged_header_is_skipped_and_reported(tmp_path):
    """Regression: a GTZAN .au whose header was damaged was cached as 8 kHz u-law noise labelled 'jazz'."""
    keys = [f"{g}/{g}.{i:05d}" for g in ("jazz", "rock") for i in range(3)]
    root = write_gtzan_au(tmp_path / "gtzan", keys)
    damage_header(root / "genres" / "jazz" / "jazz.00001.au")
    summary = run(dataset="gtzan", root=root, out=tmp_path / "c")
    df = read_manifest(tmp_path / "c")
    assert summary["skipped"] == 1 and len(df) == 5 and "jazz/jazz.00001.au" not in set(df.source)
    errors = pd.read_csv(tmp_path / "c" / "errors.csv", dtype=str, keep_default_na=False)
    (row,) = errors.itertuples()
    assert row.file.endswith("jazz/jazz.00001.au") and row.kind == "error" and "header does not parse" in row.reason
    assert df.duration.astype(float).tolist() == [pytest.approx(0.2)] * 5  # the good ones read as before
