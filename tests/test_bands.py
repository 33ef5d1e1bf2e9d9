"""Band recipes: exact values, dB clamping, nodata -> NaN, normalisation."""

import numpy as np
import pytest

from unosat.bands import BandRecipe, Normalization, polarisations_to_stack, to_db, valid_pixels
from unosat.errors import UnosatError

VH = np.array([[0.01, 0.02], [0.0, -0.001]], dtype=np.float32)
VV = np.array([[0.1, 0.3], [0.2, 0.05]], dtype=np.float32)


def test_3b_linear_is_vh_vv_mean():
    stack = BandRecipe("3b", ("vh", "vv", "mean"), "linear").compute(VH, VV)
    np.testing.assert_array_equal(stack[0], VH)
    np.testing.assert_array_equal(stack[1], VV)
    np.testing.assert_allclose(stack[2], (VH + VV) / 2, rtol=0, atol=0)
    assert stack.dtype == np.float32 and stack.shape == (3, 2, 2)


def test_db_recipe_clamps_below_1e_8():
    stack = BandRecipe("db", ("vh", "vv", "mean"), "db").compute(VH, VV)
    np.testing.assert_allclose(stack[1], 10 * np.log10(VV), rtol=1e-6)
    assert stack[0][0, 0] == pytest.approx(-20.0, abs=1e-5)
    # 0 and negative values are clamped to 1e-8 -> -80 dB
    assert stack[0][1, 0] == pytest.approx(-80.0, abs=1e-4)
    assert stack[0][1, 1] == pytest.approx(-80.0, abs=1e-4)
    np.testing.assert_allclose(stack[2], 10 * np.log10(np.maximum((VH + VV) / 2, 1e-8)), rtol=1e-6)


def test_5b_adds_difference_and_norm():
    stack = BandRecipe("5b", ("vh", "vv", "mean", "diff", "norm"), "linear").compute(VH, VV)
    np.testing.assert_allclose(stack[3], VV - VH, rtol=1e-7)
    np.testing.assert_allclose(stack[4], np.sqrt(VH**2 + VV**2), rtol=1e-6)


def test_nodata_values_nan_and_inf_become_one_mask():
    vh = np.array([[0.0, 0.02, np.nan, 0.01, 0.03]], dtype=np.float32)
    vv = np.array([[0.1, -99999, 0.2, np.inf, 0.2]], dtype=np.float32)
    recipe = BandRecipe()
    stack, valid, n_nonfinite = polarisations_to_stack(vh, vv, recipe, (0.0, -99999.0))
    np.testing.assert_array_equal(valid, [[False, False, False, False, True]])
    assert n_nonfinite == 2
    assert np.isnan(stack[:, ~valid]).all() and np.isfinite(stack[:, valid]).all()


def test_small_negative_values_are_valid_data():
    # thermal-noise removal leaves small negatives in valid pixels: they are data, not nodata
    valid = valid_pixels(np.array([-0.001], np.float32), np.array([0.1], np.float32), (0.0, -99999.0))
    assert valid.all()


def test_db_input_is_converted_to_linear_first():
    vh_db = to_db(VH[:1])
    vv_db = to_db(VV[:1])
    stack, valid, _ = polarisations_to_stack(vh_db, vv_db, BandRecipe(), (-99999.0,), input_units="db")
    np.testing.assert_allclose(stack[1], VV[:1], rtol=1e-5)
    np.testing.assert_allclose(stack[2], (VH[:1] + VV[:1]) / 2, rtol=1e-5)


def test_polarisations_round_trip_in_db_and_linear():
    for units in ("linear", "db"):
        recipe = BandRecipe("x", ("vv", "mean", "vh"), units)
        stack = recipe.compute(VH[:1], VV[:1])
        vh, vv = recipe.polarisations(stack)
        np.testing.assert_allclose(vh, VH[:1], rtol=1e-5)
        np.testing.assert_allclose(vv, VV[:1], rtol=1e-5)


def test_bad_recipes_are_refused():
    with pytest.raises(UnosatError, match="unknown band"):
        BandRecipe("x", ("vh", "hh"))
    with pytest.raises(UnosatError, match="units"):
        BandRecipe("x", ("vh",), "log")
    with pytest.raises(UnosatError, match="does not hold both"):
        BandRecipe("x", ("vv", "mean")).polarisation_indices()


def test_normalization_standardises_and_fills_nodata():
    norm = Normalization((1.0, 2.0), (2.0, 4.0))
    image = np.array([[[3.0, 10.0], [np.nan, np.nan]]], dtype=np.float32)  # (1, 2, C=2)
    out = norm.apply(image)
    np.testing.assert_allclose(out[0, 0], [1.0, 2.0])
    np.testing.assert_array_equal(out[0, 1], [0.0, 0.0])
    with pytest.raises(UnosatError, match="std"):
        Normalization((0.0,), (0.0,))
