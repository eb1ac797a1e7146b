"""The Algorithm 1 explorer and the segmentation figures run headless and react to their controls."""
import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from wsseg_nb import metrics, segment as sg, widgets  # noqa: E402
from wsseg_nb.plots import segmentation as splots  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A hand-made store (two val studies, one lesion-free), gated slices, CAMs of two methods, their grid search."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    rows = []
    for sid, depth, lesion in (("V1", 5, True), ("V2", 3, False)):
        suv = rng.gamma(1.5, 0.6, (depth, 32, 32)).astype(np.float32)
        mask = np.zeros(suv.shape, np.uint8)
        if lesion:
            mask[1:4, 10:16, 10:16] = 1
            suv[mask.astype(bool)] += 6
        (root / "store" / sid).mkdir(parents=True)
        for name, arr in (("suv", suv), ("ct", np.full(suv.shape, 40, np.int16)), ("mask", mask)):
            np.save(root / "store" / sid / f"{name}.npy", arr)
        (root / "store" / sid / "meta.json").write_text(json.dumps({"shape": list(suv.shape), "spacing_mm": [6, 4, 4],
                                                                    "affine": np.eye(4).tolist()}))
        vox = mask.reshape(depth, -1).sum(1)
        rows.append(pd.DataFrame({"study_id": sid, "slice": range(depth), "label": (vox > 0).astype(int),
                                  "lesion_voxels": vox, "lesion_area_mm2": vox * 16.0, "split": "val",
                                  "diagnosis": "melanoma"}))
    pd.concat(rows).to_csv(root / "store" / "index.csv", index=False)
    (root / "cams").mkdir()
    pd.DataFrame({"study_id": ["V1", "V1", "V1", "V2"], "slice": [1, 2, 3, 0], "split": "val", "label": [1, 1, 1, 0],
                  "prob": 0.8}).to_csv(root / "cams" / "index.csv", index=False)
    data = sg.load_gated(root, ("val",))
    cams = {}
    for method, blur in (("cam", 0.0), ("scorecam", 0.3)):
        cam = np.full((4, 8, 8), blur, np.float32)
        cam[:3, 2:4, 2:4] = 1.0
        cam[3] = rng.random((8, 8))
        cams[method] = cam
    tuned = {m: sg.tune_algorithm1(c, data.suv, data.gt, data.rows["study_id"], data.gt_total,
                                   np.linspace(0.1, 0.9, 5), np.linspace(20, 50, 4)) for m, c in cams.items()}
    return data, cams, tuned


def _pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def test_explorer_starts_at_the_tuned_point_on_the_largest_lesion(setup):
    data, cams, tuned = setup
    ex = widgets.Explorer(data, cams, tuned)
    assert ex.params == {"method": "cam", **tuned["cam"].params, "study_id": "V1", "z": 1}
    view = ex.view()
    masks = sg.segment_studies(data, cams["cam"], view.t, view.q)
    truth = data.store.study("V1").mask[:].astype(bool)
    assert view.study_dice == pytest.approx(metrics.dice(masks["V1"], truth), abs=1e-12)
    np.testing.assert_array_equal(view.mask, masks["V1"][1])
    assert view.slice_dice == pytest.approx(splots.slice_dice(masks["V1"][1], truth[1]))


def test_update_changes_the_figure_without_a_display(setup):
    data, cams, tuned = setup
    ex = widgets.Explorer(data, cams, tuned)
    before = _pixels(ex.figure)
    region_before = ex._art["panels"][2].get_array().copy()
    fig = ex.update(method="scorecam", t=0.2)  # ScoreCAM's background 0.3 >= 0.2: the region is the whole slice
    assert fig is ex.figure and ex.view().region.all()
    assert not np.array_equal(ex._art["panels"][2].get_array(), region_before)
    assert not np.array_equal(_pixels(ex.figure), before)
    assert ex._art["titles"][2].get_text().startswith("region CAM ≥ 0.20")
    ex.update(method="cam")
    assert (ex.params["t"], ex.params["q"]) == (tuned["cam"].params["t"], tuned["cam"].params["q"])
    np.testing.assert_array_equal(ex._art["point"].get_data(), [[ex.params["q"]], [ex.params["t"]]])


def test_ungated_slice_and_study_switch(setup):
    data, cams, tuned = setup
    ex = widgets.Explorer(data, cams, tuned)
    ex.update(z=4)  # not in cams/index.csv: the classifier said "no tumour"
    view = ex.view()
    assert view.cam is None and not view.region.any() and not view.mask.any()
    assert "not tumorous" in ex._art["titles"][1].get_text()
    ex.update(study_id="V2")
    assert ex.params["z"] == 0 and np.isnan(ex.view().study_dice)  # no lesion: Dice undefined
    with pytest.raises(ValueError, match="unknown explorer parameter"):
        ex.update(threshold=0.3)
    with pytest.raises(ValueError, match="not tuned"):
        ex.update(method="gradcam")


def test_draw_is_pure_and_widget_controls_drive_update(setup):
    data, cams, tuned = setup
    ex = widgets.Explorer(data, cams, tuned)
    fig = widgets.draw(ex.view())
    assert fig is not ex.figure and len(fig.axes) == 6  # five panels and the surface's colour bar
    np.testing.assert_array_equal(_pixels(fig), _pixels(ex.figure))
    panel = ex.widget()
    sliders = {c.description: c for row in panel.box.children[:2] for c in row.children}
    q_options = sliders["q (SUV %)"].options
    assert list(q_options) == [float(v) for v in tuned["cam"].grid["q"]]  # the slider walks the tuned grid
    assert not sliders["q (SUV %)"].continuous_update and not sliders["slice"].continuous_update
    sliders["q (SUV %)"].value = q_options[1]
    assert ex.params["q"] == q_options[1]
    view = ex.view()
    assert panel.numbers.value == widgets.status(view)
    assert f"q {q_options[1]:.1f}" in panel.numbers.value and f"study Dice {view.study_dice:.3f}" in panel.numbers.value
    sliders["method"].value = "scorecam"
    assert sliders["t (CAM)"].value == pytest.approx(tuned["scorecam"].params["t"])


def test_buttons_step_through_the_slices_with_maps_and_a_saved_panel_shows_a_frame(setup):
    data, cams, tuned = setup
    ex = widgets.Explorer(data, cams, tuned, study_id="V1")
    assert ex.cam_slices("V1") == [1, 2, 3]
    panel = ex.widget()
    panel.controls["z"].value = 0
    panel.steps[1].click()
    assert ex.params["z"] == 1
    panel.steps[1].click()
    assert ex.params["z"] == 2
    panel.steps[-1].click()
    panel.steps[-1].click()  # no map before slice 1: stays
    assert ex.params["z"] == 1
    bundle = panel._repr_mimebundle_()
    assert bundle["image/png"] and "VBox" not in bundle["text/plain"]


def test_segmentation_figures(setup):
    data, cams, tuned = setup
    fig = splots.algorithm1_steps(cams["cam"][0], data.suv[0], data.gt[0], 0.5, 31.0)
    assert len(fig.axes) == 6
    fig = splots.dice_surfaces(tuned)
    marks = [line.get_xydata()[0].tolist() for line in fig.axes[0].lines]
    assert marks == [[tuned["cam"].params["q"], tuned["cam"].params["t"]], [31.0, 0.3]]  # chosen, paper
    overlap = splots.overlap_rgba(np.array([[1, 1, 0]]), np.array([[1, 0, 1]]))
    np.testing.assert_array_equal(overlap[0, :, :3], np.array([splots.TP, splots.FP, splots.FN], np.float32)[:, :3])


def test_png_is_the_current_frame(setup):
    data, cams, tuned = setup
    ex = widgets.Explorer(data, cams, tuned)
    first = ex.png()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    ex.update(q=49.0)
    assert ex.png() != first


def test_panel_titles_lie_inside_the_frame_the_widget_shows(setup):
    data, cams, tuned = setup
    ex = widgets.Explorer(data, cams, tuned)
    ex.update(z=3)  # another frame: the titles' text changes, the frozen layout does not
    fig = ex.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:5]:
        box = ax.title.get_window_extent(renderer)
        assert ax.title.get_text() and box.y1 <= fig.bbox.y1 and box.x0 >= 0 and box.x1 <= fig.bbox.x1
