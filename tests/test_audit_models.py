"""Audit detectors on tiny generated textures: defects score above clean images."""
import numpy as np
import pytest

from _audit_data import paste_defect, stripes

pytestmark = pytest.mark.slow   # trains or converts networks

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def texture():
    train = stripes(48, seed=1)
    clean = stripes(4, seed=2)
    defect = np.stack([paste_defect(im, 5, 5, 5)[0] for im in stripes(4, seed=3)])
    mask = paste_defect(clean[0], 5, 5, 5)[1]
    return train, clean, defect, mask


@pytest.fixture(scope="module")
def ae(texture):
    from models.autoencoders import ProjectionDetector

    return ProjectionDetector(kind="ae", size=(16, 16), epochs=25, latent=16, filters=8, steps=30,
                              alpha=2.0, batch=16).fit(texture[0])


def test_projection_scores_defects_above_clean(ae, texture):
    _, clean, defect, _ = texture
    s_clean, s_def = ae.anomaly_score(clean), ae.anomaly_score(defect)
    assert s_def.scores.min() > s_clean.scores.max()
    assert s_def.maps.shape == (4, 16, 16)
    # the map is highest inside the pasted square
    peak = np.unravel_index(np.argmax(s_def.maps[0]), (16, 16))
    assert 4 <= peak[0] <= 10 and 4 <= peak[1] <= 10


def test_gradient_projection_reduces_energy(ae, texture):
    x0 = texture[2].astype(np.float32) / 255
    xt = ae.project(x0, steps=30)
    assert np.all(ae.energy(xt, x0) < ae.energy(x0, x0))
    # the projection moves the defect more than the rest of the image
    diff = np.abs(xt - x0)
    assert diff[:, 5:10, 5:10].mean() > 2 * diff[:, 11:, 11:].mean()


def test_masked_inpainting_changes_only_inside_mask(ae, texture):
    x0 = texture[2][:1].astype(np.float32) / 255
    mask = texture[3]
    xt = ae.project(x0, mask=mask, steps=20)
    assert np.array_equal(xt[0][mask == 0], x0[0][mask == 0])
    # the white square is pulled towards the stripes the autoencoder knows
    assert xt[0][mask == 1].mean() < x0[0][mask == 1].mean() - 0.1
    assert ae.energy(xt, x0)[0] < ae.energy(x0, x0)[0]


def test_vae_round_trip_through_files(texture):
    from models.autoencoders import ProjectionDetector

    det = ProjectionDetector(kind="vae", size=(16, 16), epochs=2, latent=8, filters=4, steps=3).fit(texture[0])
    files = det.to_files("p")
    back = ProjectionDetector.from_files(det.params(), files, "p")
    np.testing.assert_allclose(back.anomaly_score(texture[2]).scores, det.anomaly_score(texture[2]).scores,
                               rtol=1e-5)
    bad = dict(files)
    del bad["p_decoder.weights.h5"]
    with pytest.raises(ValueError, match="p_decoder.weights.h5"):
        ProjectionDetector.from_files(det.params(), bad, "p")


def test_anogan_scores_defects_above_clean(texture):
    from models.anogan import AnoGANDetector

    train, clean, defect, _ = texture
    det = AnoGANDetector(size=(16, 16), epochs=30, latent=8, filters=8, batch=16, steps=60, z_lr=0.1).fit(train)
    s_clean, s_def = det.anomaly_score(clean), det.anomaly_score(defect)
    assert np.median(s_def.scores) > np.max(s_clean.scores)
    assert s_def.extra["recon"].shape == (4, 16, 16)


def test_anogan_encoder_variant_single_pass(texture):
    from models.anogan import AnoGANDetector

    train, clean, defect, _ = texture
    det = AnoGANDetector(size=(16, 16), epochs=30, latent=8, filters=8, batch=16, encoder=True,
                         encoder_epochs=30, steps=0).fit(train)
    assert det.encoder is not None
    s_clean, s_def = det.anomaly_score(clean), det.anomaly_score(defect)
    assert np.median(s_def.scores) > np.max(s_clean.scores)
    files = det.to_files("g")
    assert "g_encoder.weights.h5" in files


def test_nkn_normalised_map_peaks_at_defect():
    from models.nkn import NKNDetector

    img = stripes(1, size=24, seed=5)[0]
    bad, mask = paste_defect(img, 9, 13, 3)
    det = NKNDetector(mask=4, context=4, fit_steps=15, fit_windows=16)
    s = det.anomaly_score([img, bad])
    norm = s.extra["norm_maps"][1]
    peak = np.unravel_index(np.argmax(norm), norm.shape)
    assert mask[peak] == 1 or (8 <= peak[0] <= 12 and 12 <= peak[1] <= 16)
    assert s.extra["norm_scores"][1] > s.extra["norm_scores"][0]
    assert s.extra["raw_scores"][1] > s.extra["raw_scores"][0]
    assert np.all(s.extra["sigma"] > 0)
    # the reconstruction removes the defect: close to the clean image inside the mask
    rec = s.extra["recon"][1]
    assert np.abs(rec[mask == 1] - img[mask == 1] / 255).mean() < np.abs(bad[mask == 1] - img[mask == 1]).mean() / 255


def test_nkn_rejects_too_small_image():
    from models.nkn import NKNDetector

    with pytest.raises(ValueError, match="smaller than"):
        NKNDetector(mask=8).anomaly_score([np.zeros((4, 4), np.uint8)])


def test_period_estimate_finds_stripe_period():
    from models.nkn import estimate_periods

    img = stripes(1, size=64, period=6, seed=0)[0].astype(float)
    assert abs(estimate_periods(img)[1] - 6) <= 1
