"""Body-weight SUV: the DESIGN.md reference case, decay, pass-through and bad inputs."""
import numpy as np
import pytest

from wsseg_nb.errors import InputError
from wsseg_nb.suv import F18_HALF_LIFE_S, check_body_suv, seconds_between, suv_factor, to_suv

REFERENCE = 4.2748316187197236e-4  # DESIGN.md: 67 kg, 374 MBq, 08:30:45 -> 10:48:29


def test_reference_case():
    dt = seconds_between("08:30:45", "10:48:29")
    assert dt == 8264
    assert suv_factor(67, 374, dt) == pytest.approx(REFERENCE, rel=1e-12)
    pet = np.array([[[0.0, 1000.0, 12345.5]]], dtype=np.float32)
    np.testing.assert_allclose(to_suv(pet, "BQML", 67, 374, dt), pet * REFERENCE, rtol=1e-6)


def test_decay_and_scaling_identities():
    base = suv_factor(70, 300, 0)
    assert base == pytest.approx(70e3 / 300e6, rel=1e-15)
    assert suv_factor(70, 300, F18_HALF_LIFE_S) == pytest.approx(2 * base, rel=1e-12)
    assert suv_factor(140, 300, 0) == pytest.approx(2 * base, rel=1e-15)


def test_clock_times_across_midnight():
    assert seconds_between("23:59:30", "00:00:15") == 45


def test_vectorised_equals_scalar():
    w, a, dt = [67.0, 80.0, 55.5], [374.0, 250.0, 410.0], [8264.0, 3600.0, 0.0]
    out = suv_factor(w, a, dt, ["A", "B", "C"])
    assert out.shape == (3,)
    np.testing.assert_allclose(out, [suv_factor(*args) for args in zip(w, a, dt)], rtol=1e-15)


def test_suv_input_passes_through():
    pet = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(to_suv(pet, "SUV"), pet)


@pytest.mark.parametrize("args, field", [
    ((None, 374, 8264), "weight_kg"), ((float("nan"), 374, 8264), "weight_kg"), ((-67, 374, 8264), "weight_kg"),
    ((67, 0, 8264), "injected_activity_mbq"), ((67, 374, -1), "injection_to_scan_s"),
])
def test_bad_fields_name_study_and_field(args, field):
    with pytest.raises(ValueError, match=rf"study PETCT_0007: field {field}"):
        to_suv(np.ones((1, 1, 1)), "BQML", *args, study_id="PETCT_0007")


def test_vectorised_error_names_the_bad_study():
    with pytest.raises(ValueError, match="study B: field weight_kg"):
        suv_factor([67, 0], [374, 374], [0, 0], ["A", "B"])


def test_unknown_units():
    with pytest.raises(ValueError, match="study X: field pet_units"):
        to_suv(np.ones((1, 1, 1)), "kBq", 67, 374, 0, study_id="X")


def test_body_suv_percentiles_are_returned_when_plausible():
    body = np.arange(101, dtype=np.float32) / 10  # 0.0 .. 10.0: 1st percentile 0.1, 99th 9.9
    out = check_body_suv(body, "SUV", "w")
    assert out == pytest.approx({"body_suv_p1": 0.1, "body_suv_p99": 9.9}, rel=1e-6)


@pytest.mark.parametrize("scale, units, match", [
    (1000.0, "SUV", r"w: pet_units SUV: 99th percentile of SUV in the body is 9900, expected 0.2..100 "
                    r"\(values in Bq/ml labelled SUV\? set pet_units to BQML"),
    (20.0, "BQML", r"w: pet_units BQML: 99th percentile of SUV in the body is 198, .*check weight_kg"),
    (0.01, "BQML", r"w: pet_units BQML: 99th percentile .* is 0.099, .*values already in SUV labelled BQML"),
    (0.01, "SUV", r"w: pet_units SUV: .* is 0.099, .*\(nearly\) empty or scaled"),
])
def test_implausible_body_suv_names_the_units(scale, units, match):
    with pytest.raises(InputError, match=match):
        check_body_suv(np.arange(101, dtype=np.float32) / 10 * scale, units, "w")


def test_negative_suv_beyond_noise():
    body = np.arange(101, dtype=np.float32) / 10
    body[:3] = -4.0  # the 1st percentile lands on -4
    with pytest.raises(InputError, match=r"w: 1st percentile of SUV in the body is -4, expected >= -1"):
        check_body_suv(body, "BQML", "w")
    body[:3] = -0.5
    assert check_body_suv(body, "BQML", "w")["body_suv_p1"] == pytest.approx(-0.5)
