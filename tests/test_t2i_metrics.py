"""FID, IS, R-precision and CLIP score against their formulas, scipy and torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from t2i_helpers import isolate_torch_fidelity
from xmr.errors import XmrError
from xmr.eval.generation import (
    clip_score,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    frechet_distance_to_features,
    inception_score,
    r_precision,
    trace_sqrt_product,
)
from xmr.eval.t2i_stats import InceptionStats, check_stats_weights, load_stats, save_stats


def _scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """pytorch-fid's computation: np.cov, scipy.linalg.sqrtm, real part."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(24, 24))
    x = rng.normal(size=(300, 24)) @ mix
    y = rng.normal(size=(250, 24)) @ (mix + 0.3 * rng.normal(size=(24, 24))) + 0.5
    return x, y


def test_fid_of_a_set_with_itself_is_zero_and_matches_scipy_on_another(feats):
    x, y = feats
    assert abs(fid_from_features(x, x)) < 1e-8
    value = fid_from_features(x, y)
    assert value > 1.0
    assert value == pytest.approx(_scipy_fid(x, y), rel=1e-9)
    # A pure shift of the mean adds exactly its squared length.
    assert fid_from_features(x, x + 2.0) == pytest.approx(4.0 * x.shape[1], rel=1e-9)


def test_small_set_route_equals_the_d_by_d_route():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(80, 40)) @ rng.normal(size=(40, 40))
    mu, sigma = feature_statistics(real)
    for n in (5, 39, 40, 41, 120):  # N x N route below D = 40, the D x D one above
        gen = rng.normal(size=(n, 40)) * 2 + 1
        expected = frechet_distance(*feature_statistics(gen), mu, sigma)
        # (the D x D route adds sqrt(round-off) of its D - N null eigenvalues: ~1e-8 relative)
        assert frechet_distance_to_features(gen, mu, sigma) == pytest.approx(expected, rel=1e-7)
        assert fid_from_features(gen, real) == pytest.approx(_scipy_fid(gen, real), rel=1e-6)


def test_trace_sqrt_is_stable_on_singular_covariances():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))  # rank 9 and 11 out of 64
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ours = trace_sqrt_product(s1, s2)
    # Independent: the eigenvalues of S1 S2 are real and >= 0; their square roots sum to it.
    eig = np.linalg.eigvals(s1 @ s2)
    assert ours == pytest.approx(np.sqrt(np.clip(eig.real, 0, None)).sum(), rel=1e-6)
    assert np.isfinite(frechet_distance(*feature_statistics(x), *feature_statistics(y)))
    with pytest.raises(XmrError, match="different dimensions"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(XmrError, match="at least 2 images"):
        feature_statistics(np.zeros((1, 4)))


def test_fid_matches_torchmetrics_on_the_same_features(feats):
    isolate_torch_fidelity()
    torchmetrics = pytest.importorskip("torchmetrics.image.fid")
    x, y = feats
    # torchmetrics takes a feature module; nn.Flatten over (N, 1, 4, 6) hands it the features.
    metric = torchmetrics.FrechetInceptionDistance(
        feature=torch.nn.Flatten(), input_img_size=(1, 4, 6)
    )
    metric.update(torch.from_numpy(x).reshape(-1, 1, 4, 6), real=True)
    metric.update(torch.from_numpy(y).reshape(-1, 1, 4, 6), real=False)
    assert float(metric.compute()) == pytest.approx(fid_from_features(x, y), rel=1e-6)


def test_inception_score_formula_on_known_logits():
    # 20 images, 2 splits; in each split every image is sure of its own class out of 10:
    # p(y|x) one-hot, p(y) uniform over 10 -> KL = log 10 -> IS = 10 in both splits.
    logits = np.full((20, 1008), -50.0)
    for i in range(20):
        logits[i, i % 10] = 50.0
    mean, std = inception_score(logits, splits=2)
    assert mean == pytest.approx(10.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    assert inception_score(np.zeros((20, 1008)), splits=2)[0] == pytest.approx(1.0)
    # Random logits: the formula written out with scipy.
    from scipy.special import softmax

    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (50, 30))
    scores = []
    for part in np.array_split(softmax(logits, axis=1), 10):
        marginal = part.mean(0)
        scores.append(np.exp(np.mean([np.sum(p * np.log(p / marginal)) for p in part])))
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-9)
    perm = np.random.RandomState(2020).permutation(50)
    assert inception_score(logits, 10, shuffle_seed=2020) == inception_score(logits[perm], 10)
    with pytest.raises(XmrError, match="at least 10 images"):
        inception_score(logits[:5], 10)


def test_inception_score_matches_torchmetrics():
    isolate_torch_fidelity()
    tm = pytest.importorskip("torchmetrics.image.inception")
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (40, 1008))
    # torchmetrics takes a feature module returning logits; here the identity on logits.
    metric = tm.InceptionScore(feature=torch.nn.Identity(), splits=10)
    metric.update(torch.from_numpy(logits))
    torch.manual_seed(7)
    mean, std = metric.compute()
    torch.manual_seed(7)
    perm = torch.randperm(40).numpy()  # torchmetrics permutes before splitting
    ours_mean, ours_std = inception_score(logits[perm], splits=10)
    assert float(mean) == pytest.approx(ours_mean, rel=1e-6)
    # torchmetrics reports the sample std (n - 1), the original code the population std.
    assert float(std) == pytest.approx(ours_std * np.sqrt(10 / 9), rel=1e-5)


def test_r_precision_on_a_hand_made_case():
    # 4 orthogonal directions; images 0-2 point at their own text, image 3 at text 0's.
    txt = np.eye(4, dtype=np.float32)
    img = np.eye(4, dtype=np.float32)
    img[3] = [1.0, 0.0, 0.0, 0.2]
    r = r_precision(img, txt, candidates=2, repeats=5, seed=0)
    # Image 3 loses exactly when text 0 is its drawn rival (1 in 3), every repeat is 3/4 or 4/4.
    assert set(r["repeats"]) <= {0.75, 1.0}
    assert r["per_image"][:3].tolist() == [1.0, 1.0, 1.0]
    full = r_precision(img, txt, candidates=4, repeats=3, seed=0)
    assert full["mean"] == 0.75 and full["std"] == 0.0  # all texts ranked: image 3 always misses
    again = r_precision(img, txt, candidates=2, repeats=5, seed=0)
    assert again["repeats"] == r["repeats"]  # fixed seed, same draws
    # A duplicate description is not a mismatch: with texts given, ties cannot be drawn.
    same = np.eye(3)[[0, 0, 2]]
    dup = r_precision(same, same, ["a", "a", "b"], candidates=2, repeats=4)
    assert dup["per_image"].tolist() == [1.0, 1.0, 1.0]
    blind = r_precision(same, same, candidates=2, repeats=20)  # may draw the twin: a tie, a miss
    assert blind["per_image"][0] < 1.0 and blind["per_image"][2] == 1.0
    with pytest.raises(XmrError, match="needs 99 mismatched texts"):
        r_precision(img, txt)


def test_clip_score_is_scaled_clipped_cosine():
    img = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    txt = np.array([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    score = clip_score(img, txt)
    assert score["mean"] == pytest.approx(100 * (np.sqrt(0.5) + 1.0 + 0.0) / 3)
    assert clip_score(img, txt, scale=2.5)["mean"] == pytest.approx(score["mean"] / 40)


def test_stats_file_round_trip_and_weights_check(tmp_path, feats):
    x, _ = feats
    mu, sigma = feature_statistics(x)
    path = save_stats(
        InceptionStats(mu, sigma, len(x), "ab" * 32, "state_dict", "real.tsv"), tmp_path / "s.npz"
    )
    back = load_stats(path)
    np.testing.assert_array_equal(back.mu, mu)
    np.testing.assert_array_equal(back.sigma, sigma)
    assert (back.count, back.weights_sha256) == (len(x), "ab" * 32)
    check_stats_weights(back, "ab" * 32, path)
    with pytest.raises(XmrError, match="other Inception weights|not the given ones"):
        check_stats_weights(back, "cd" * 32, path)
    np.savez(tmp_path / "foreign.npz", mu=mu, sigma=sigma)  # pytorch-fid / clean-fid layout
    foreign = load_stats(tmp_path / "foreign.npz")
    assert foreign.weights_sha256 is None and foreign.count is None
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(XmrError, match="needs arrays 'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")
