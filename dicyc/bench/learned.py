"""What DiCyc's deformed pass learned, next to the true scanner deformation.

The papers' claim is that the deformed pass G_T takes up the deformation that sets one domain
apart (here the T2 scanner's field φ), so the undeformed pass G, which synthesis uses, need not.
This module checks that on a finished quality-benchmark run. For a test subject's middle brain
slice, in exactly the model space training saw (canonical orientation, normalised, cropped):

* A→B (PD→T2): G_T should apply φ: G_T(x)(p) ≈ G(x)(p + φ(p));
* B→A (T2→PD): from a deformed T2 it should undo φ, about −φ.

The *effective* deformation of the deformed pass is found by registering G_T(x) to G(x)
(:func:`dicyc.geometry.displacement_field`, 2-D): it sums what the offset fields and the TPS do,
whatever their stages. ``reproduced`` is its projection onto ±φ (1: all of it, 0: none). The
figure also draws the offset fields (summed over stages, in image pixels) and the TPS on their
own.
"""

from pathlib import Path

import numpy as np


def load_training_networks(run_dir):
    """(recipe, networks) of a finished run, every network restored from its checkpoint."""
    import torch

    from dicyc.checkpoint import load_checkpoint_networks
    from dicyc.methods import get_method
    from dicyc.modelfile import read_card

    config = dict(read_card(Path(run_dir) / "model.safetensors")["training"])  # the run's resolved configuration
    recipe = get_method(config["method"])(config)
    torch.manual_seed(0)
    nets = recipe.build_networks()
    load_checkpoint_networks(Path(run_dir) / "checkpoint.safetensors", nets)
    for net in nets.values():
        net.eval().requires_grad_(False)
    return recipe, nets


def _field_in_model_space(field, volume, meta):
    """A (3, nz, ny, nx) voxel field of ``volume``'s grid, in the canonical, cropped model space.

    Returns (2, nz', S, S): the in-plane components along the model's (y, x) axes, in pixels.
    """
    from dicyc.preprocess import canonical_array, canonical_axes, crop_pad_axial

    axes = canonical_axes(volume.direction)  # ITK axis order: canonical axis t <- source axis src
    comps = [None, None, None]  # numpy order (z, y, x) of the canonical view
    for t, (src, flip) in enumerate(axes):
        comp = canonical_array(np.asarray(field[2 - src], dtype=np.float32), axes)
        comps[2 - t] = -comp if flip else comp
    size = int(meta["crop"]["size"])
    center = tuple(meta["body_centroid_yx"])
    return np.stack([crop_pad_axial(c, size, center=center, fill=0.0)[0] for c in comps[1:]])


def _model_space(path, modality, config):
    from dicyc.data import preprocess_volume

    arr, meta = preprocess_volume(path, modality, config["spacing"], config["slice_size"], config["mr_normalization"])
    return np.asarray(arr, dtype=np.float32), meta


def _mask_in_model_space(mask_volume, meta):
    from dicyc.preprocess import canonical_axes, canonical_array, crop_pad_axial

    axes = canonical_axes(mask_volume.direction)
    arr = canonical_array(np.asarray(mask_volume.array) > 0, axes)
    return crop_pad_axial(arr, int(meta["crop"]["size"]), center=tuple(meta["body_centroid_yx"]), fill=False)[0]


def _parts(recipe, nets, direction, x, target):
    """(G(x), G_T(x), summed offset field, TPS field), fields (2, S, S) in image pixels, (y, x) order."""
    import torch

    g, other = nets[f"G_{direction}"], nets["G_BA" if direction == "AB" else "G_AB"]
    with torch.no_grad():
        xt = torch.from_numpy(x)[None, None]
        tt = torch.from_numpy(target)[None, None]
        ctx = {f"target_latent_{direction}": other.encode(tt)}
        und, deformed = recipe._pair(nets, direction, xt, xt, ctx)
        size = x.shape[-1]
        offsets = np.zeros((2, size, size), np.float32)
        stride = {name: s for name, _, s in g.warp_points}
        features = {}

        def grab(stage, f):
            features[stage] = f
            return f

        g.encode(xt, grab)
        for stage, layer in nets[f"O_{direction}"].offsets.items():
            f = layer.field(features[stage])  # (1, 2, h, w): (dx, dy) in pixels of that map
            f = torch.nn.functional.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
            offsets += stride[stage] * f[0].numpy()[::-1]  # (dy, dx) in image pixels
        tps = np.zeros_like(offsets)
        if f"T_{direction}" in nets:
            layer = nets[f"T_{direction}"]
            d = layer.displacements(g.encode(xt), ctx[f"target_latent_{direction}"])
            from dicyc.nets.warps import tps_grid

            h = size // 4
            grid = tps_grid(d, layer.inverse_kernel, layer.control_points, h, h)[0].numpy()  # (h, h, 2) x, y
            from dicyc.nets.warps import pixel_centres

            shift = (grid - pixel_centres(h, h, dtype=torch.float64).numpy()) * (size / 2.0)  # image pixels
            t = torch.from_numpy(np.ascontiguousarray(shift[..., ::-1].transpose(2, 0, 1)))[None].float()
            tps = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    return und[0, 0].numpy(), deformed[0, 0].numpy(), offsets, tps


def analyse(run_dir, subject, field):
    """Per direction, what the run's deformed pass learned on ``subject``'s middle brain slice.

    ``subject`` holds the paths ``pd``, ``t2_def``, ``mask`` and ``mask_def`` (quality benchmark);
    ``field`` is the subject's scanner field on the phantom grid. Returns
    ``{"AB": {...}, "BA": {...}}`` with the slice's images and fields and ``reproduced``.
    """
    from dicyc.geometry import displacement_field
    from dicyc.volume import read_volume

    recipe, nets = load_training_networks(run_dir)
    config = recipe.config
    pd, pd_meta = _model_space(subject["pd"], config["modality_a"], config)
    t2, t2_meta = _model_space(subject["t2_def"], config["modality_b"], config)
    out = {}
    for direction, x, meta, target, mask_key, sign in (("AB", pd, pd_meta, t2, "mask", 1.0),
                                                         ("BA", t2, t2_meta, pd, "mask_def", -1.0)):
        mask = _mask_in_model_space(read_volume(subject[mask_key]), meta)
        z = int(np.argmax(mask.sum(axis=(1, 2))))
        phi = _field_in_model_space(field, read_volume(subject["pd"]), meta)[:, z]
        und, deformed, offsets, tps = _parts(recipe, nets, direction, x[z], target[min(z, len(target) - 1)])
        learned = displacement_field(deformed, und)  # und(p + u) ≈ G_T(x)(p)
        m = mask[z]
        norm = float((phi * phi).sum(0)[m].sum())
        reproduced = float(sign * (learned * phi).sum(0)[m].sum() / norm) if norm > 0 else 0.0
        out[direction] = {"source": x[z], "undeformed": und, "deformed": deformed, "true": sign * phi,
                          "learned": learned, "offsets": offsets, "tps": tps, "mask": m, "reproduced": reproduced}
    return out


def write_figure(path, analysis, title):
    """Source, G(x), G_T(x), then the true deformation beside the learned ones, for both directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dicyc.atomic import atomic_path

    labels = {"AB": ("PD→T2", "true: φ"), "BA": ("T2→PD", "true: −φ (undo)")}
    fig, axes = plt.subplots(2, 7, figsize=(15, 4.8), squeeze=False)
    for row, direction in enumerate(("AB", "BA")):
        a = analysis[direction]
        name, truth = labels[direction]
        panels = [(a["source"], f"{name}: source"), (a["undeformed"], "G(x), synthesis"), (a["deformed"], "G_T(x)")]
        for col, (image, caption) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
        fields = [(a["true"], truth), (a["learned"], f"learned, effective ({a['reproduced']:.2f} of it)"),
                  (a["offsets"], "offset fields (sum)"), (a["tps"], "TPS")]
        scale = max(float(np.sqrt((a["true"] ** 2).sum(0)).max()), 1e-3)
        for col, (f, caption) in enumerate(fields, start=3):
            ax = axes[row, col]
            ax.imshow(np.sqrt((f ** 2).sum(0)) * a["mask"], cmap="viridis", vmin=0, vmax=scale)
            step = max(1, f.shape[-1] // 16)
            yy, xx = np.mgrid[0:f.shape[1]:step, 0:f.shape[2]:step]
            ax.quiver(xx, yy, f[1, ::step, ::step], f[0, ::step, ::step], color="white", angles="xy",
                      scale_units="xy", scale=0.5, width=0.006)
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{title}: what the deformed pass learned (pull-back displacements, pixels, arrows ×2; "
                 f"colour 0–{scale:.1f} px)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return str(path)


def deformed_pass_scores(run_dir, cohort_dir, n_slices=8):
    """SSIM of G(x) and of G_T(x) against the clean reference, on an *undeformed* cohort's test subjects.

    Why: on the undeformed control there is nothing to deform, so a deformed pass that keeps
    close to G(x) scores about what G(x) scores. One that warps anyway means the discriminator
    has been judging warped outputs, and G was trained to make *those* look real. Each test
    subject's ``n_slices`` slices with the most brain are taken in model space; the TPS is given
    the subject's own (aligned) target slice. SSIM is :func:`dicyc.bench.quality.score`'s (per
    volume z-scored in the brain mask). Returns ``{"AB": {"undeformed": [..], "deformed": [..]},
    "BA": ...}``, one value per test subject.
    """
    import torch

    from dicyc.bench.quality import DICYC_FAMILY, score
    from dicyc.errors import DicycError
    from dicyc.phantom import load_cohort
    from dicyc.volume import Volume, read_volume

    recipe, nets = load_training_networks(run_dir)
    config = recipe.config
    if config["method"] not in DICYC_FAMILY:
        raise DicycError(f"{run_dir} is a {config['method']} run, which has no deformed pass; name a DiCyc run.")
    if int(config.get("context_slices", 1)) != 1:
        raise DicycError(f"{run_dir} is a 2.5-D run (context_slices {config['context_slices']}); "
                         "this check reads 2-D runs, as the quality benchmark trains them.")
    cohort_dir = Path(cohort_dir)
    out = {d: {"undeformed": [], "deformed": []} for d in ("AB", "BA")}
    for subject in load_cohort(cohort_dir)["subjects"]:
        if subject["split"] != "test":
            continue
        a, meta = _model_space(cohort_dir / subject["pd"], config["modality_a"], config)
        b, _ = _model_space(cohort_dir / subject["t2"], config["modality_b"], config)
        clean = {"AB": _model_space(cohort_dir / subject["t2_clean"], config["modality_b"], config)[0],
                 "BA": _model_space(cohort_dir / subject["pd_clean"], config["modality_a"], config)[0]}
        mask = _mask_in_model_space(read_volume(cohort_dir / subject["mask"]), meta)
        zs = np.sort(np.argsort(mask.sum(axis=(1, 2)), kind="stable")[-int(n_slices):])
        for direction, x, target in (("AB", a, b), ("BA", b, a)):
            other = nets["G_BA" if direction == "AB" else "G_AB"]
            with torch.no_grad():
                xt = torch.from_numpy(np.ascontiguousarray(x[zs]))[:, None]
                tt = torch.from_numpy(np.ascontiguousarray(target[zs]))[:, None]
                und, deformed = recipe._pair(nets, direction, xt, xt, {f"target_latent_{direction}": other.encode(tt)})
            for name, pred in (("undeformed", und), ("deformed", deformed)):
                s = score(Volume(pred[:, 0].numpy()), Volume(clean[direction][zs]), mask[zs])
                out[direction][name].append(s["ssim"])
    return out


def passes_on_head(run_dir, source_path, target_path, n_show=3, seed=0):
    """What G(x) and G_T(x) of an A→B DiCyc run make of a real source volume, in HU.

    Why: the head benchmark scores G(x) only, and on a real MR→CT pair it is less CT-like than
    CycleGAN's. This says whether the realism went into the deformed pass, the one the
    discriminator judges. Each body slice of ``source_path`` (model space, as training saw it)
    goes through both passes; the TPS is steered by a random body slice of ``target_path``
    (drawn with ``seed``). Returns the air / soft-tissue / bone fractions
    (:func:`dicyc.bench.head.tissue_fractions`) of G(x) and of G_T(x) inside the source's body,
    those of the real target (``real``) inside its own body, the mean |G(x) − G_T(x)| in HU, and ``n_show``
    slices evenly through the body (source, G(x), G_T(x), a target slice) for a figure.
    """
    import torch
    from scipy import ndimage

    from dicyc.bench.head import tissue_fractions
    from dicyc.errors import DicycError
    from dicyc.preprocess import ct_normalization

    recipe, nets = load_training_networks(run_dir)
    config = recipe.config
    if "T_AB" not in nets and "O_AB" not in nets:
        raise DicycError(f"{run_dir} is a {config['method']} run, which has no deformed pass; name a DiCyc run.")
    if str(config.get("modality_b", "")).upper() != "CT" or int(config.get("context_slices", 1)) != 1:
        raise DicycError(f"{run_dir} is not a 2-D run with CT as domain B; this check reads 2-D MR→CT runs.")
    x, _ = _model_space(source_path, config["modality_a"], config)
    target, _ = _model_space(target_path, "CT", config)

    def body(slices, level):  # the largest in-plane object above ``level``, holes filled, per slice
        out = np.zeros(slices.shape, bool)
        for k, s in enumerate(slices):
            labels, n = ndimage.label(s > level)
            if n:
                out[k] = ndimage.binary_fill_holes(labels == np.bincount(labels.ravel())[1:].argmax() + 1)
        return out

    hu = ct_normalization().inverse
    x_body, t_body = body(x, -0.9), body(target, float(ct_normalization().forward(np.array([-500.0]))[0]))
    zs = np.nonzero(x_body.mean(axis=(1, 2)) > 0.05)[0]
    tz_all = np.nonzero(t_body.mean(axis=(1, 2)) > 0.05)[0]
    if zs.size == 0 or tz_all.size == 0:
        raise DicycError(f"{source_path if zs.size == 0 else target_path} has no body slice in the run's model space.")
    tz = np.random.default_rng(seed).choice(tz_all, zs.size)
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x[zs], dtype=np.float32))[:, None]
        tt = torch.from_numpy(np.ascontiguousarray(target[tz], dtype=np.float32))[:, None]
        und, deformed = recipe._pair(nets, "AB", xt, xt, {"target_latent_AB": nets["G_BA"].encode(tt)})
    und, deformed = hu(und[:, 0].numpy()), hu(deformed[:, 0].numpy())
    mask = x_body[zs]
    show = [int(i) for i in np.linspace(0, zs.size - 1, n_show + 2)[1:-1].round()]
    return {
        "undeformed": tissue_fractions(und[mask]), "deformed": tissue_fractions(deformed[mask]),
        "real": tissue_fractions(hu(target[t_body])), "mean_abs_difference_hu": float(np.abs(und - deformed).mean()),
        "slices": int(zs.size),
        "examples": [{"z": int(zs[i]), "source": x[zs[i]], "undeformed": und[i], "deformed": deformed[i],
                      "real": hu(target[tz[i]])} for i in show],
    }


def write_passes_figure(path, passes, title):
    """Rows of source, G(x), G_T(x) and a target CT slice, CT shown at -300 … 600 HU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dicyc.atomic import atomic_path

    rows = passes["examples"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    names = (("source", "source MR"), ("undeformed", "G(x): synthesis"), ("deformed", "G_T(x): judged by D"),
             ("real", "a real CT slice"))
    for r, row in enumerate(rows):
        for c, (key, label) in enumerate(names):
            ct = key != "source"
            axes[r, c].imshow(row[key], cmap="gray", vmin=-300 if ct else None, vmax=600 if ct else None)
            axes[r, c].set_title(f"{label}" + ("" if c else f" (z {row['z']})"), fontsize=9)
            axes[r, c].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return str(path)
