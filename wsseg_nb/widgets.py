"""Algorithm 1 explorer: t, q, method, study and slice controls over PET/CT, CAM, region, mask and the Dice surface."""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import PIL.Image
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import segment
from .plots import segmentation as splots
from .plots.images import CT_WINDOW
from .report import DISPLAY

REGION = (1.0, 0.6, 0.0, 0.45)
"""Colour of the CAM region H'."""


@dataclass(frozen=True)
class View:
    """Everything one explorer frame shows; `draw` turns it into a figure (notebook 04)."""

    method: str
    t: float
    q: float
    floor: float
    study_id: str
    z: int
    suv: np.ndarray
    ct: np.ndarray
    gt: np.ndarray
    cam: np.ndarray | None
    region: np.ndarray
    mask: np.ndarray
    t_q: float
    slice_dice: float
    study_dice: float
    surface: np.ndarray
    t_grid: tuple[float, ...]
    q_grid: tuple[float, ...]


def _titles(view: View) -> list[str]:
    """Panel titles carrying the numbers of the frame."""
    gate = "tumorous" if view.cam is not None else "not tumorous -> empty mask"
    t_q = f"t_q = {view.t_q:.2f}" if np.isfinite(view.t_q) else "empty region"
    floor = f", floor {view.floor:g}" if view.floor > 0 else ""
    return [f"{view.study_id} z={view.z}: PET/CT, truth",
            f"{DISPLAY.get(view.method, view.method)} ({gate})",
            f"region CAM ≥ {view.t:.2f}, {t_q}",
            f"mask q={view.q:.1f}{floor}: slice Dice {view.slice_dice:.2f}",
            f"val surface; study Dice {view.study_dice:.2f}" if np.isfinite(view.study_dice)
            else "val surface; study without lesion"]


def status(view: View) -> str:
    """One line of the frame's numbers as text (the live panel shows it under the image; a browser test reads it)."""
    study = f"{view.study_dice:.3f}" if np.isfinite(view.study_dice) else "n/a (no lesion)"
    return (f"{DISPLAY.get(view.method, view.method)} · t {view.t:.2f} · q {view.q:.1f} · floor {view.floor:g} · "
            f"{view.study_id} "
            f"z={view.z} · slice Dice {view.slice_dice:.3f} · study Dice {study}")


def _rgb(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """A scalar image as float RGB (S, S, 3) through a colormap."""
    return matplotlib.colormaps[cmap](np.clip((values - vmin) / (vmax - vmin), 0, 1))[..., :3]


def _over(base: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Alpha-composite an RGBA layer over an RGB image."""
    alpha = rgba[..., 3:]
    return base * (1 - alpha) + rgba[..., :3] * alpha


def _panels(view: View) -> list[np.ndarray]:
    """The four image panels as uint8 RGB, composited in numpy (one image artist per panel: fast redraws)."""
    pet = _rgb(view.suv, "gray_r", 0.0, splots.SUV_MAX)
    fused = 0.5 * _rgb(view.ct, "gray", *CT_WINDOW) + 0.5 * _rgb(view.suv, "hot", 0.0, splots.SUV_MAX)
    cam = pet
    if view.cam is not None:
        up = segment.upscale_nearest(view.cam[None], view.suv.shape[-1])[0]
        cam = 0.5 * pet + 0.5 * _rgb(up, "jet", 0.0, 1.0)
    region = np.zeros(view.region.shape + (4,))
    region[view.region] = REGION
    outline = splots.outline_rgba(view.gt)
    layers = [_over(fused, outline), _over(cam, outline), _over(_over(pet, region), outline),
              _over(pet, splots.overlap_rgba(view.mask, view.gt))]
    return [(255 * layer).astype(np.uint8) for layer in layers]


def _build(view: View) -> tuple[Figure, dict[str, Artist]]:
    """The figure and the artists that updates touch (Agg canvas, works without a display; layout frozen)."""
    fig = Figure(figsize=(14, 3.1), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    size = view.suv.shape[-1]
    art: dict[str, Any] = {"panels": [ax.imshow(np.zeros((size, size, 3), np.uint8), interpolation="nearest")
                                      for ax in axes[:4]]}
    for ax in axes[:4]:
        ax.set_axis_off()
    art["surface"] = splots.surface_image(axes[4], view.surface, view.t_grid, view.q_grid)
    art["point"], = axes[4].plot([view.q], [view.t], "wx", ms=10, mew=2.5)
    # the first frame's titles, so that the layout leaves room for them; fixed y: no title auto-placement
    art["titles"] = [ax.set_title(title, fontsize=9, y=1.0) for ax, title in zip(axes, _titles(view))]
    axes[4].set_xticks(np.linspace(view.q_grid[0], view.q_grid[-1], 3))  # few tick labels: text dominates redraws
    axes[4].set_yticks(np.linspace(view.t_grid[0], view.t_grid[-1], 3))
    fig.colorbar(art["surface"], ax=axes[4], shrink=0.8, ticks=MaxNLocator(3))
    fig.canvas.draw()
    fig.set_layout_engine("none")  # positions computed once; redraws skip the layout solver
    return fig, art


def _apply(art: dict[str, Any], view: View) -> None:
    """Point the artists at a new frame (no new artists: a cheap redraw)."""
    for image, panel in zip(art["panels"], _panels(view)):
        image.set_data(panel)
    art["surface"].set_data(view.surface)
    art["surface"].set_clim(0, splots.colour_top([view.surface]))
    art["point"].set_data([view.q], [view.t])
    for text, title in zip(art["titles"], _titles(view)):
        text.set_text(title)


def draw(view: View) -> Figure:
    """One explorer frame as a static figure (headless runs, papermill) (notebook 04)."""
    fig, art = _build(view)
    _apply(art, view)
    return fig


class Explorer:
    """Live Algorithm 1 on the val/test slices: `update(**changes)` recomputes the frame and redraws (notebook 04)."""

    KEYS = ("method", "t", "q", "floor", "study_id", "z")

    def __init__(self, data: segment.GatedSlices, cams: Mapping[str, np.ndarray],
                 tuned: Mapping[str, segment.Tuned], method: str | None = None, study_id: str | None = None):
        self.data, self.cams, self.tuned = data, dict(cams), dict(tuned)
        if not self.tuned or set(self.tuned) - set(self.cams):
            raise ValueError(f"need CAMs for every tuned method, got cams {sorted(self.cams)}, tuned {sorted(tuned)}")
        self._rows = data.rows.groupby("study_id").indices
        self._slot = {(s, int(z)): i for i, (s, z) in enumerate(zip(data.rows["study_id"], data.rows["slice"]))}
        method = method or next(iter(self.tuned))
        if study_id is None:
            study_id = str(data.studies["lesion_voxels"].idxmax())
        self.params: dict[str, Any] = {"method": method, "floor": 0.0, **self.tuned[method].params,
                                       "study_id": study_id,
                                       "z": self._default_slice(study_id)}
        self.current = self.view()
        self.figure, self._art = _build(self.current)
        _apply(self._art, self.current)

    def _default_slice(self, study_id: str) -> int:
        """The study's slice with the largest lesion area (its first slice if it has none)."""
        index = self.data.store.index
        rows = index[index["study_id"] == study_id]
        if rows.empty:
            raise ValueError(f"study {study_id} is not in the store index")
        return int(rows["slice"].iloc[int(np.argmax(rows["lesion_voxels"].to_numpy()))])

    def view(self) -> View:
        """The frame at the current parameters."""
        p = self.params
        method, t, q, floor = p["method"], float(p["t"]), float(p["q"]), float(p["floor"])
        sid, z = p["study_id"], int(p["z"])
        study = self.data.store.study(sid)
        suv, ct, gt = np.asarray(study.suv[z]), np.asarray(study.ct[z]), np.asarray(study.mask[z], dtype=bool)
        rows = self._rows.get(sid, np.zeros(0, dtype=np.intp))
        cams = self.cams[method][rows]
        masks = segment.algorithm1(cams, self.data.suv[rows], t, q, floor=floor)
        study_dice = segment.study_dice(np.logical_and(masks, self.data.gt[rows]).sum(axis=(1, 2)),
                                        masks.sum(axis=(1, 2)), [sid] * len(rows), self.data.gt_total[[sid]])[0]
        slot = self._slot.get((sid, z))
        cam = None if slot is None else self.cams[method][slot]
        region = (segment.cam_region(cam[None], t, suv.shape[-1])[0] if cam is not None
                  else np.zeros(suv.shape, dtype=bool))
        mask = masks[np.flatnonzero(rows == slot)[0]] if cam is not None else np.zeros(suv.shape, dtype=bool)
        t_q = float(segment.region_percentile(suv[None], region[None], q)[0])  # NaN: empty region
        t_q = max(t_q, floor) if np.isfinite(t_q) else t_q
        result = self.tuned[method]
        return View(method, t, q, floor, sid, z, suv, ct, gt, cam, region, mask, t_q, splots.slice_dice(mask, gt),
                    float(study_dice), result.surface, result.grid["t"], result.grid["q"])

    def update(self, **changes: Any) -> Figure:
        """Set some of method, t, q, floor, study_id, z and redraw (a new method jumps to its tuned (t, q, floor))."""
        unknown = set(changes) - set(self.KEYS)
        if unknown:
            raise ValueError(f"unknown explorer parameter(s) {sorted(unknown)}; valid: {self.KEYS}")
        if "method" in changes and changes["method"] not in self.tuned:
            raise ValueError(f"method {changes['method']!r} not tuned; choose one of {sorted(self.tuned)}")
        if "method" in changes and not {"t", "q", "floor"} & changes.keys():
            changes = {"floor": 0.0, **self.tuned[changes["method"]].params, **changes}
        if "study_id" in changes and "z" not in changes:
            changes["z"] = self._default_slice(changes["study_id"])
        self.params.update(changes)
        self.current = self.view()
        _apply(self._art, self.current)
        return self.figure

    def png(self) -> bytes:
        """The current frame as PNG (Agg draw + fast zlib level 1: what the live widget shows)."""
        self.figure.canvas.draw()
        buffer = io.BytesIO()
        PIL.Image.fromarray(np.asarray(self.figure.canvas.buffer_rgba())).save(buffer, format="png", compress_level=1)
        return buffer.getvalue()

    def cam_slices(self, study_id: str) -> list[int]:
        """The study's slices that have maps (gated by the classifier, or truly tumorous), in order."""
        return sorted(int(self.data.rows["slice"].iloc[i]) for i in self._rows.get(study_id, []))

    def widget(self) -> "ExplorerPanel":
        """ipywidgets controls over the live frame (JupyterLab): a released control calls update and redraws.

        t and q step through the tuned grid (the Dice-surface marker stays on it); the buttons jump to the previous
        or next slice that has maps; errors raised in a callback are shown in the panel's Output area.
        """
        import ipywidgets as w

        p = self.params
        grid = self.tuned[p["method"]].grid
        depth = lambda sid: self.data.store.volume_grid(sid)["shape"][0]  # noqa: E731
        controls = {
            "method": w.Dropdown(options=[(DISPLAY.get(m, m), m) for m in self.tuned], value=p["method"],
                                 description="method"),
            "t": w.SelectionSlider(options=[float(v) for v in grid["t"]], value=float(p["t"]), description="t (CAM)",
                                   continuous_update=False),
            "q": w.SelectionSlider(options=[float(v) for v in grid["q"]], value=float(p["q"]),
                                   description="q (SUV %)", continuous_update=False),
            "study_id": w.Dropdown(options=list(self.data.studies.index), value=p["study_id"], description="study"),
            "z": w.IntSlider(value=p["z"], min=0, max=depth(p["study_id"]) - 1, description="slice",
                             continuous_update=False),
        }
        steps = {-1: w.Button(description="◀ slice with map"), 1: w.Button(description="slice with map ▶")}
        image = w.Image(value=self.png(), format="png")
        numbers = w.HTML(value=status(self.current))
        errors = w.Output()

        def on_change(key: str, change: dict[str, Any]) -> None:
            with errors:
                if key == "study_id":
                    controls["z"].max = depth(change["new"]) - 1
                self.update(**{key: change["new"]})
                for name, control in controls.items():  # a new method or study moves t, q and z too
                    control.unobserve(handlers[name], "value")
                    control.value = self.params[name]
                    control.observe(handlers[name], "value")
                image.value = self.png()
                numbers.value = status(self.current)

        def step(direction: int) -> None:
            with errors:
                z, slices = self.params["z"], self.cam_slices(self.params["study_id"])
                ahead = [s for s in slices if (s - z) * direction > 0]
                if ahead:
                    controls["z"].value = min(ahead, key=lambda s: abs(s - z))

        handlers = {name: (lambda change, name=name: on_change(name, change)) for name in controls}
        for name, control in controls.items():
            control.observe(handlers[name], "value")
        for direction, button in steps.items():
            button.on_click(lambda _, direction=direction: step(direction))
        box = w.VBox([w.HBox([controls["method"], controls["study_id"], controls["z"]]),
                      w.HBox([controls["t"], controls["q"], steps[-1], steps[1]]), image, numbers, errors])
        return ExplorerPanel(box, controls, steps, image.value, numbers)


class ExplorerPanel:
    """The explorer's widget box; a saved notebook without widget state shows its first frame as a PNG instead."""

    def __init__(self, box: Any, controls: dict[str, Any], steps: dict[int, Any], first_frame: bytes,
                 numbers: Any) -> None:
        self.box, self.controls, self.steps, self._png, self.numbers = box, controls, steps, first_frame, numbers

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.box._repr_mimebundle_(**kwargs)
        bundle["image/png"] = base64.b64encode(self._png).decode("ascii")
        bundle["text/plain"] = "Algorithm 1 explorer (live controls in JupyterLab; the first frame here)"
        return bundle
