"""Training methods as short recipes on one shared training loop.

A recipe says which networks exist, which optimiser updates which of them, and the ordered
steps of one iteration — each step a function returning a loss to minimise. ``dicyc.train``
runs any recipe the same way (data, schedule, checkpoints, events, multi-GPU), so a new method
is a subclass that changes networks or losses, never a copy of the loop.

Method names are what ``dicyc train --method`` takes; ``dicyc methods`` lists them.
"""

from dicyc.errors import DicycError


class Recipe:
    """Base recipe: two generators (A→B, B→A) and two PatchGAN discriminators.

    Subclasses override :meth:`build_networks`, :meth:`optimizer_groups` and :meth:`steps`.
    ``ctx`` passed to steps is a per-iteration dict holding ``real_a``/``real_b`` and whatever
    an earlier step stored (e.g. the fakes the discriminator step needs).
    """

    name = ""
    description = ""
    #: method-specific options (merged into the configuration, overridable like any other key)
    defaults = {}

    def __init__(self, config):
        self.config = config

    @property
    def context(self):
        """K, the neighbouring axial slices each network sees and predicts (``context_slices``; 1 = 2-D)."""
        return int(self.config.get("context_slices", 1) or 1)

    def prepare(self, data_a, data_b, device, log):
        """Work needed once before training (e.g. pre-training a feature extractor)."""

    def card_details(self):
        """Method-specific facts recorded in the model card (e.g. how an extractor was pre-trained)."""
        return {}

    # -- networks --------------------------------------------------------------
    def architecture(self):
        """The generator architecture recorded in the model card (what synthesis rebuilds).

        A 2.5-D model (``context_slices`` K > 1) takes K neighbouring slices as channels and
        predicts the K corresponding slices, so G_BA reads G_AB's output as it reads a real slab
        and the cycle stays consistent; only the first and last convolutions grow.
        """
        c = self.config
        return {
            "generator": "resnet",
            "ngf": int(c["ngf"]),
            "n_blocks": int(c["n_blocks"]),
            "upsample": c["upsample"],
            "input_nc": self.context,
            "output_nc": self.context,
        }

    def build_networks(self):
        from dicyc.nets import build_discriminator, build_generator, init_weights

        nets = {
            "G_AB": build_generator(self.architecture()),
            "G_BA": build_generator(self.architecture()),
            "D_A": build_discriminator(int(self.config["ndf"]), input_nc=self.context),
            "D_B": build_discriminator(int(self.config["ndf"]), input_nc=self.context),
        }
        for net in nets.values():
            init_weights(net)
        return nets

    def optimizer_groups(self):
        """Optimiser name → the networks it updates."""
        return {"G": ["G_AB", "G_BA"], "D": ["D_A", "D_B"]}

    def synthesis_networks(self):
        """Networks written to the model file: all that synthesis needs, nothing more."""
        return ["G_AB", "G_BA"]

    def pools(self):
        """Image pools the discriminator steps draw fakes from."""
        return ["fake_a", "fake_b"]

    def steps(self):
        """Ordered (optimiser name, step function) pairs making one iteration."""
        raise NotImplementedError

    def monitored_loss(self, losses):
        """The number the schedule's early-stop rule watches (an epoch mean of it)."""
        return losses.get("G", 0.0)


class CycleGAN(Recipe):
    """Zhu et al. 2017: LSGAN, L1 cycle consistency (λ = 10), optional identity loss."""

    name = "cyclegan"
    description = "CycleGAN (Zhu et al. 2017): LSGAN + L1 cycle loss; learns domain deformations too"

    def steps(self):
        return [("G", self.generator_step), ("D", self.discriminator_step)]

    def translate(self, nets, ctx):
        """Both directions and their cycles; stores fakes for the discriminator step."""
        ctx["fake_b"] = nets["G_AB"](ctx["real_a"])
        ctx["fake_a"] = nets["G_BA"](ctx["real_b"])
        ctx["rec_a"] = nets["G_BA"](ctx["fake_b"])
        ctx["rec_b"] = nets["G_AB"](ctx["fake_a"])

    def generator_losses(self, nets, ctx):
        """Named generator loss terms (already weighted); subclasses add their own."""
        from dicyc.losses import l1, lsgan_loss

        c = self.config
        terms = {
            "adv_ab": lsgan_loss(nets["D_B"](ctx["fake_b"]), True),
            "adv_ba": lsgan_loss(nets["D_A"](ctx["fake_a"]), True),
            "cycle": c["lambda_cycle"] * (l1(ctx["rec_a"], ctx["real_a"]) + l1(ctx["rec_b"], ctx["real_b"])),
        }
        if c.get("lambda_identity", 0) > 0:
            lam = c["lambda_identity"] * c["lambda_cycle"]
            terms["identity"] = lam * (
                l1(nets["G_AB"](ctx["real_b"]), ctx["real_b"]) + l1(nets["G_BA"](ctx["real_a"]), ctx["real_a"])
            )
        return terms

    def generator_step(self, nets, ctx):
        self.translate(nets, ctx)
        terms = self.generator_losses(nets, ctx)
        total = sum(terms.values())
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["G"] = float(total.detach())
        return total, logged

    def discriminator_step(self, nets, ctx):
        from dicyc.losses import discriminator_loss

        pools = ctx["pools"]
        fake_b = pools["fake_b"].query(ctx["fake_b"])
        fake_a = pools["fake_a"].query(ctx["fake_a"])
        d_b = discriminator_loss(nets["D_B"], ctx["real_b"], fake_b)
        d_a = discriminator_loss(nets["D_A"], ctx["real_a"], fake_a)
        total = d_a + d_b
        return total, {"D_A": float(d_a.detach()), "D_B": float(d_b.detach())}


def per_slice(batch):
    """(N, K, H, W) → (N·K, 1, H, W): a 2.5-D slab's slices as a batch of single slices (a view).

    The similarity measures and Cycle-MedGAN's feature extractors expect one channel; folding K
    into the batch applies them slice by slice without changing any of them. K = 1 is unchanged.
    """
    n, k, h, w = batch.shape
    return batch if k == 1 else batch.reshape(n * k, 1, h, w)


class AlignedCycleGAN(CycleGAN):
    """CycleGAN plus a source–synthesis alignment term on each direction.

    ``similarity`` names the measure (``nmi``, ``gc`` or ``mind``): the term asks the synthetic
    image to keep the structure of the image it came from, the weakness these baselines attack.
    """

    similarity = "nmi"
    defaults = {"lambda_align": 0.9}

    def alignment(self, source, synthetic):
        """Loss (≥ 0) that is small when ``synthetic`` keeps the structure of ``source``.

        The measures compare single slices (N, 1, H, W); the K slices of a 2.5-D slab are
        folded into the batch (:func:`per_slice`), so each slice is held to its own source slice
        and the loss is the mean over all of them, as for a batch of N·K 2-D slices.
        """
        from dicyc import similarity as sim

        source, synthetic = per_slice(source), per_slice(synthetic)
        if self.similarity == "nmi":
            return 1.0 - sim.nmi(source, synthetic).mean()
        if self.similarity == "gc":
            return 1.0 - sim.gradient_correlation(source, synthetic).mean()
        if self.similarity == "mind":
            return sim.mind_loss(source, synthetic)
        raise ValueError(f"unknown similarity {self.similarity!r}")

    def alignment_pair(self, a, fake_b, b, fake_a):
        """alignment(a, fake_b) + alignment(b, fake_a), as one batch of both directions.

        Each measure is a mean over its batch, so twice the mean over the joined batch is the
        sum of the two; one call costs much less than two at the small batches of training.
        """
        import torch

        if a.shape != b.shape:
            return self.alignment(a, fake_b) + self.alignment(b, fake_a)
        return 2.0 * self.alignment(torch.cat((a, b)), torch.cat((fake_b, fake_a)))

    def generator_losses(self, nets, ctx):
        terms = super().generator_losses(nets, ctx)
        lam = self.config["lambda_align"]
        terms["align"] = lam * self.alignment_pair(ctx["real_a"], ctx["fake_b"], ctx["real_b"], ctx["fake_a"])
        return terms


class NMICycleGAN(AlignedCycleGAN):
    name = "nmi-cyclegan"
    description = "CycleGAN + NMI alignment between each image and its synthesis (λ 0.9)"


class GCCycleGAN(AlignedCycleGAN):
    name = "gcc-cyclegan"
    description = "CycleGAN + gradient-correlation consistency of Sobel gradients (Hiasa et al. 2018)"
    similarity = "gc"
    defaults = {"lambda_align": 0.9}


class MINDCycleGAN(AlignedCycleGAN):
    name = "mind-cyclegan"
    description = "structure-constrained CycleGAN: MIND loss (λ 5) + position-based slices (Yang et al. 2018)"
    similarity = "mind"
    defaults = {"lambda_align": 5.0, "sampling": "position"}


#: the papers' deformation modules: per-pixel offsets, TPS control points free to reach anywhere on
#: the latent map, and nothing tying the deformed pass to the undeformed one
PAPERS_DEFORMATION = {"lambda_warp": 0.0, "tps_max_displacement": 1.0, "offset_grid": 0, "offset_max_displacement": 0.0}
#: ``dicyc``'s default deformation since 2026-12-02: the two passes tied (λ_warp 3) and the
#: modules bounded (offsets smooth on an 8x8 lattice within 5 % of the map, control points
#: within a tenth of it). It helps both the deformed setting and the undeformed control on both
#: phantom families over 3 seeds, and the real head's outline and realism (README, *The default
#: recipe*), the rule issue 11 set for a departure to become a default.
TIED_BOUNDED = {"lambda_warp": 3.0, "tps_max_displacement": 0.1, "offset_grid": 8, "offset_max_displacement": 0.05}


class DiCyc(AlignedCycleGAN):
    """DiCyc (Wang et al., Information Fusion 2021), as the papers define it.

    Each generator runs twice with the same parameters θ. The *undeformed* pass G(x) = G(x | θ)
    is what synthesis uses. The *deformed* pass G_T(x) = G(x | θ, θ_T) goes through offset
    fields sharing one 2-D field per feature map, in front of the input block, both
    down-sampling convolutions and the residual stack (``offset_stages``), and a thin-plate
    spline on the latent features. The spline is steered by the concatenated latent codes of
    the source and of a target-domain image. With x_A = a, x_B = b (DicycleGAN, MICCAI-W 2018,
    Eqs. 1-4; the 2021 paper repeats them):

        L_GAN^{A→B}   = (D_B(G_T^{A→B}(a)) − 1)²                       the deformed outputs only
        L_align       = 2 − NMI(a, G^{A→B}(a)) − NMI(b, G^{B→A}(b))    the undeformed outputs
        L_cyc         = |G^{B→A}(G^{A→B}(a)) − a| + |G^{A→B}(G^{B→A}(b)) − b|
        L_dicyc       = |G_T^{B→A}(G_T^{A→B}(a)) − a| + |G_T^{A→B}(G_T^{B→A}(b)) − b|
        L             = L_GAN^{A→B} + L_GAN^{B→A} + λ_align L_align + λ_cyc L_cyc + λ_dicyc L_dicyc

    with λ_cyc = λ_dicyc = 10 and λ_align = 0.9. The discriminators judge the deformed outputs,
    so a domain's own deformation is absorbed by θ_T. The undeformed output is held to its
    source by the alignment loss, and L_dicyc ties the deformed cycle back to the input.

    EM training (2021). The E step moves only the TPS transformers, on every term that
    depends on them (L_GAN on the deformed outputs and L_dicyc). The M step moves the
    generators and offset fields on the whole of L. Since the E step's loss is exactly the
    θ_TPS-dependent part of L, one backward pass of L gives both steps' gradients, and
    ``em: "joint"`` (the default) takes both steps from one forward and one backward.
    ``em: "alternate"`` runs a separate E step before the M step (two backward passes).

    The default deformation departs from the papers in one measured way (:data:`TIED_BOUNDED`):
    ``lambda_warp`` 3 ties G_T(x) to G(x) moved by the deformation's own warp, and the offset
    and TPS fields are smooth and bounded. The papers' modules are :data:`PAPERS_DEFORMATION`,
    spelled ``dicyc[lambda_warp=0,offset_grid=0,offset_max_displacement=0,tps_max_displacement=1]``.
    Other options that depart from the papers, off by default, each measured in the README:
    ``dicyc_loss: "commutation"`` (|G_T^{B→A}(G^{A→B}(a)) − G^{B→A}(G_T^{A→B}(a))| + B side),
    ``lambda_adv_undeformed`` > 0 (the undeformed outputs are judged too, and reach the
    discriminators), ``lambda_adv_local`` > 0 (the undeformed outputs are judged by small
    PatchGANs of their own, ``local_d_layers`` deep: 1 layer sees 16x16 pixels, too little to
    tell where anatomy sits, enough to judge its contrast and texture), ``lambda_hist`` > 0
    (G(x)'s intensity histogram is pulled to G_T(x)'s, see :meth:`histogram_terms`). The default's
    own options: ``lambda_warp`` (G_T(x) must be G(x) moved by the deformation's own composed
    warp, see :meth:`warp_terms`; 0 in the papers), ``offset_grid`` / ``offset_max_displacement``
    (smooth and bounded offset fields; 0 is the papers' per-pixel, unbounded field) and
    ``tps_max_displacement`` (each control point's move bounded through a tanh, in units of half
    the latent map: 1, the papers', lets it reach anywhere on the map).

    Synthesis uses the undeformed pass only: the model file holds the generators alone and
    costs what a CycleGAN costs.
    """

    name = "dicyc"
    description = ("DiCyc (Wang et al. 2021): offset convs + TPS transformer, NMI alignment, dicyc loss, EM training; "
                   "the two passes tied and the modules bounded (the papers' modules are an option)")
    defaults = {"lambda_align": 0.9, "lambda_dicyc": 10.0, "dicyc_loss": "paper", "em": "joint",
                "lambda_adv_undeformed": 0.0, "lambda_adv_local": 0.0, "local_d_layers": 1, "lambda_hist": 0.0,
                "tps_grid": 6, **TIED_BOUNDED, "offset_stages": ["stem", "down1", "down2", "block0"]}
    #: option values that train exactly as before the option existed (see
    #: :func:`dicyc.bench.digest_config`): the local discriminators are not built at λ 0, and
    #: at λ_warp 0 (the papers' recipe) no tie is computed, so a benchmark run of the papers'
    #: recipe keeps the name it had when that recipe was the default
    inert_defaults = {"lambda_adv_local": 0.0, "local_d_layers": 1, "lambda_hist": 0.0, "lambda_warp": 0.0}
    use_tps = True
    #: the choices of the string options
    CHOICES = {"dicyc_loss": ("paper", "commutation"), "em": ("joint", "alternate")}

    def __init__(self, config):
        super().__init__(config)
        stages = list(config.get("offset_stages") or [])
        blocks = int(config.get("n_blocks", 0) or 0)
        valid = ["stem", "down1", "down2"] + [f"block{i}" for i in range(blocks)]
        bad = [st for st in stages if st not in valid]
        if bad or not stages:
            raise DicycError(
                f"offset_stages {stages} is not a non-empty list of generator stages; choose from {', '.join(valid)}."
            )
        for key, choices in self.CHOICES.items():
            if key in self.defaults and config.get(key) not in choices:
                raise DicycError(f"training option {key} must be one of {', '.join(choices)}; got {config.get(key)!r}.")
        if self.use_tps and not float(config["tps_max_displacement"]) > 0:
            raise DicycError(f"tps_max_displacement must be above 0; got {config['tps_max_displacement']}.")
        layers = config.get("local_d_layers", 1)
        if not isinstance(layers, int) or isinstance(layers, bool) or not 0 <= layers <= 3:
            raise DicycError(f"training option local_d_layers must be an integer from 0 to 3; got {layers!r}.")

    def build_networks(self):
        from dicyc.nets.warps import Deformation, TPSTransformer

        nets = super().build_networks()
        for direction in ("AB", "BA"):
            g = nets[f"G_{direction}"]
            points = [p for p in g.warp_points if p[0] in self.config["offset_stages"]]
            nets[f"O_{direction}"] = Deformation(
                points, offsets=True, tps=False, offset_grid=self.config["offset_grid"] or None,
                offset_max_displacement=self.config["offset_max_displacement"] or None,
            )
            if self.use_tps:
                latent = [c for name, c, _ in g.warp_points if name == "latent"][0]
                nets[f"T_{direction}"] = TPSTransformer(
                    latent, grid_size=int(self.config["tps_grid"]),
                    max_displacement=float(self.config["tps_max_displacement"]),
                )
        if self.judges_locally():
            from dicyc.nets import build_discriminator, init_weights

            for domain in ("A", "B"):
                nets[f"D_local_{domain}"] = build_discriminator(int(self.config["ndf"]),
                                                                n_layers=int(self.config["local_d_layers"]),
                                                                input_nc=self.context)
                init_weights(nets[f"D_local_{domain}"])
        return nets

    def optimizer_groups(self):
        groups = {"G": ["G_AB", "G_BA", "O_AB", "O_BA"], "D": ["D_A", "D_B"]}
        if self.judges_locally():
            groups["D"] += ["D_local_A", "D_local_B"]
        if self.use_tps:
            groups["T"] = ["T_AB", "T_BA"]
        return groups

    def pools(self):
        extra = ["und_a", "und_b"] if self.judges_undeformed() or self.judges_locally() else []
        return super().pools() + extra

    def judges_undeformed(self):
        """True if the main discriminators judge the undeformed outputs too (``lambda_adv_undeformed``)."""
        return float(self.config.get("lambda_adv_undeformed", 0.0)) > 0

    def ties_warp(self):
        """True if the deformed pass must be the undeformed pass moved (``lambda_warp``)."""
        return float(self.config.get("lambda_warp", 0.0)) > 0

    def composed_warp(self, nets, direction, size):
        """The grid of G_T^{direction}'s last deformed pass as one warp of its output, detached.

        Reads the fields the offset layers and the TPS kept from that pass
        (:func:`dicyc.nets.warps.composed_grid`). Detached, so the target Φ(G(x)) does not move
        with the fields: the tie cannot be met by bending the target towards G_T(x), only by a
        deformed pass that is the undeformed one moved (the fields still get its gradient
        through G_T(x)).
        """
        from dicyc.nets.warps import composed_grid

        offsets = [field.last_field for field in nets[f"O_{direction}"].offsets.values()]
        tps = nets.get(f"T_{direction}")
        tps = None if tps is None else (tps, tps.last_displacements)
        return composed_grid(int(size[0]), int(size[1]), offsets, tps).detach()

    def judges_locally(self):
        """True if small PatchGANs judge the undeformed outputs' local appearance (``lambda_adv_local``)."""
        return float(self.config.get("lambda_adv_local", 0.0)) > 0

    def steps(self):
        if not self.use_tps:
            return [("G", self.generator_step), ("D", self.discriminator_step)]
        if self.config["em"] == "alternate":
            return [("T", self.transformer_step), ("G", self.generator_step), ("D", self.discriminator_step)]
        return [(("G", "T"), self.generator_step), ("D", self.discriminator_step)]

    # -- the two passes ----------------------------------------------------------
    def _encode_pair(self, nets, direction, x_und, x_def):
        """Encoder of G_direction on [x_und; x_def] as one batch, offsets on the second part only.

        The undeformed and the deformed pass of one generator share every weight and are
        independent of each other, so they run as one batch: the same numbers as two passes
        (instance norm is per sample), for much less than twice the time of one.
        Returns (latent of x_und, offset-deformed latent of x_def, before the TPS).
        """
        import torch

        n = x_und.shape[0]
        deformation = nets[f"O_{direction}"]
        hook = deformation.hook()

        def warp(stage, features):
            if stage not in deformation.offsets:
                return features
            return torch.cat((features[:n], hook(stage, features[n:])))

        z = nets[f"G_{direction}"].encode(torch.cat((x_und, x_def)), warp)
        return z[:n], z[n:]

    def _decode_pair(self, nets, direction, z_und, z_def, ctx):
        """Decoder of G_direction on [z_und; TPS(z_def)] as one batch: (G(x_und), G_T(x_def))."""
        import torch

        tps = nets.get(f"T_{direction}")
        if tps is not None:
            z_def = tps(z_def, ctx["target_latent_" + direction])
        out = nets[f"G_{direction}"].decode(torch.cat((z_und, z_def)))
        return out[: z_und.shape[0]], out[z_und.shape[0]:]

    def _pair(self, nets, direction, x_und, x_def, ctx):
        """(G(x_und), G_T(x_def)) of G_direction in one batched pass."""
        return self._decode_pair(nets, direction, *self._encode_pair(nets, direction, x_und, x_def), ctx)

    def passes(self, nets, ctx):
        """Both passes of both generators and of both cycles, four batched generator passes in all.

        Stores in ``ctx``: the undeformed outputs ``und_b`` = G^{A→B}(a), ``und_a`` and their
        cycles ``rec_a``, ``rec_b``; the deformed outputs ``fake_b`` = G_T^{A→B}(a), ``fake_a``
        (what the discriminators judge); and ``dicyc_pairs``, the two (prediction, target)
        pairs of L_dicyc. The TPS transformers read each real image's undeformed latent code,
        detached: E^{B→A}(b) steers the A→B spline, E^{A→B}(a) the B→A one. It conditions the
        spline and is not trained through it.
        """
        import torch

        a, b = ctx["real_a"], ctx["real_b"]
        z_a, z_a_t = self._encode_pair(nets, "AB", a, a)
        z_b, z_b_t = self._encode_pair(nets, "BA", b, b)
        ctx["target_latent_AB"], ctx["target_latent_BA"] = z_b.detach(), z_a.detach()
        ctx["und_b"], ctx["fake_b"] = self._decode_pair(nets, "AB", z_a, z_a_t, ctx)
        ctx["und_a"], ctx["fake_a"] = self._decode_pair(nets, "BA", z_b, z_b_t, ctx)
        if self.ties_warp():  # the fields of these passes, before the cycles' passes overwrite them
            ctx["warp_grids"] = {d: self.composed_warp(nets, d, ctx["fake_b"].shape[-2:]) for d in ("AB", "BA")}
        if self.config["dicyc_loss"] == "paper":  # the deformed cycle, back to the input
            ctx["rec_a"], rec_a_t = self._pair(nets, "BA", ctx["und_b"], ctx["fake_b"], ctx)
            ctx["rec_b"], rec_b_t = self._pair(nets, "AB", ctx["und_a"], ctx["fake_a"], ctx)
            ctx["dicyc_pairs"] = ((rec_a_t, a), (rec_b_t, b))
            return
        # the commutation variant: G_T^{B→A}(G^{A→B}(a)) against G^{B→A}(G_T^{A→B}(a)), and the B side
        n = a.shape[0]
        und, def_of_und_b = self._pair(nets, "BA", torch.cat((ctx["und_b"], ctx["fake_b"])), ctx["und_b"], ctx)
        ctx["rec_a"], und_of_fake_b = und[:n], und[n:]
        und, def_of_und_a = self._pair(nets, "AB", torch.cat((ctx["und_a"], ctx["fake_a"])), ctx["und_a"], ctx)
        ctx["rec_b"], und_of_fake_a = und[:n], und[n:]
        ctx["dicyc_pairs"] = ((def_of_und_b, und_of_fake_b), (def_of_und_a, und_of_fake_a))

    def _judge(self, nets, ctx):
        """Discriminator scores of the deformed outputs (and of the undeformed ones when they are judged)."""
        import torch

        if not self.judges_undeformed():
            return nets["D_B"](ctx["fake_b"]), nets["D_A"](ctx["fake_a"]), None, None
        n = ctx["fake_b"].shape[0]
        d_b = nets["D_B"](torch.cat((ctx["fake_b"], ctx["und_b"])))
        d_a = nets["D_A"](torch.cat((ctx["fake_a"], ctx["und_a"])))
        return d_b[:n], d_a[:n], d_b[n:], d_a[n:]

    def deformation_terms(self, nets, ctx, scores=None):
        """Every term that depends on θ_TPS, weighted: L_GAN on the deformed outputs and L_dicyc,
        and the tie λ_warp |G_T(x) − Φ(G(x))| when it is on (G_T(x) is the TPS's output).

        This is the E step's loss (Wang et al. 2021). Needs :meth:`passes` to have run.
        """
        from dicyc.losses import l1, lsgan_loss

        d_b, d_a = (scores or self._judge(nets, ctx))[:2]
        (pa, ta), (pb, tb) = ctx["dicyc_pairs"]
        terms = {
            "adv_ab": lsgan_loss(d_b, True),
            "adv_ba": lsgan_loss(d_a, True),
            "dicyc": self.config["lambda_dicyc"] * (l1(pa, ta) + l1(pb, tb)),
        }
        if self.ties_warp():
            terms["warp"] = self.warp_terms(ctx)
        return terms

    def histogram_terms(self, ctx):
        """λ_hist Σ W1(hist G(x), hist G_T(x)), the deformed side detached (option ``lambda_hist``).

        Why: only the deformed outputs face the discriminators, and on real heads the deformed
        pass turns out CT-like (a bright skull, flat brain) while G(x), which synthesis uses,
        keeps the MR's contrast (a dark skull, grey/white matter). A histogram cannot see where
        anatomy sits, so this hands the deformed pass's realism to G(x) without the pull towards
        the domain's geometry that judging G(x) directly brings. Detached, it moves G(x) towards
        G_T(x) and never the reverse.
        """
        from dicyc.losses import histogram_distance

        return float(self.config["lambda_hist"]) * (histogram_distance(ctx["und_b"], ctx["fake_b"].detach())
                                                    + histogram_distance(ctx["und_a"], ctx["fake_a"].detach()))

    def warp_terms(self, ctx):
        """λ_warp Σ |G_T(x) − Φ(G(x))|, Φ the deformed pass's composed warp (option ``lambda_warp``).

        Why: the offset fields and the TPS are meant to *move* content, but nothing in the
        papers' losses stops them from changing its look as well. On the real head they do:
        the deformed pass, which alone faces the discriminator, turns CT-like while G(x), the
        synthesis, keeps the MR's contrast and at long budgets collapses. Tying the deformed
        output to the undeformed output moved by Φ leaves the deformation modules nothing but
        geometry, so the discriminator's demand for a CT look reaches G(x) without the pull
        towards the target domain's geometry that judging G(x) directly brings (Φ absorbs it).
        Both images keep their gradients; Φ is detached (:meth:`composed_warp`).
        """
        from dicyc.losses import l1
        from dicyc.nets.warps import resample

        grids = ctx["warp_grids"]
        return float(self.config["lambda_warp"]) * (l1(ctx["fake_b"], resample(ctx["und_b"], grids["AB"]))
                                                    + l1(ctx["fake_a"], resample(ctx["und_a"], grids["BA"])))

    def transformer_step(self, nets, ctx):
        """E step of ``em: "alternate"``: only the TPS transformers move, on the θ_TPS-dependent terms."""
        self.passes(nets, ctx)
        terms = self.deformation_terms(nets, ctx)
        total = sum(terms.values())
        return total, {"E": float(total.detach())}

    def generator_step(self, nets, ctx):
        """The full DiCyc loss from both passes: the M step, and with ``em: "joint"`` the E step too."""
        from dicyc.losses import l1, lsgan_loss

        a, b = ctx["real_a"], ctx["real_b"]
        self.passes(nets, ctx)
        scores = self._judge(nets, ctx)
        terms = self.deformation_terms(nets, ctx, scores)
        terms["cycle"] = self.config["lambda_cycle"] * (l1(ctx["rec_a"], a) + l1(ctx["rec_b"], b))
        terms["align"] = self.config["lambda_align"] * self.alignment_pair(a, ctx["und_b"], b, ctx["und_a"])
        if self.judges_undeformed():
            w = float(self.config["lambda_adv_undeformed"])
            terms["adv_und"] = w * (lsgan_loss(scores[2], True) + lsgan_loss(scores[3], True))
        if float(self.config.get("lambda_hist", 0.0)) > 0:
            terms["hist"] = self.histogram_terms(ctx)
        if self.judges_locally():
            w = float(self.config["lambda_adv_local"])
            terms["adv_local"] = w * (lsgan_loss(nets["D_local_B"](ctx["und_b"]), True)
                                      + lsgan_loss(nets["D_local_A"](ctx["und_a"]), True))
        total = sum(terms.values())
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["G"] = float(total.detach())
        return total, logged

    def discriminator_step(self, nets, ctx):
        """CycleGAN's LSGAN discriminators on the deformed fakes, plus the undeformed ones when they are judged."""
        total, logged = super().discriminator_step(nets, ctx)
        if not (self.judges_undeformed() or self.judges_locally()):
            return total, logged
        from dicyc.losses import discriminator_loss, lsgan_loss

        pools = ctx["pools"]
        und_b = pools["und_b"].query(ctx["und_b"])
        und_a = pools["und_a"].query(ctx["und_a"])
        if self.judges_undeformed():
            w = float(self.config["lambda_adv_undeformed"])
            extra = 0.5 * w * (lsgan_loss(nets["D_B"](und_b.detach()), False)
                               + lsgan_loss(nets["D_A"](und_a.detach()), False))
            total = total + extra
            logged["D_und"] = float(extra.detach())
        if self.judges_locally():
            local = (discriminator_loss(nets["D_local_B"], ctx["real_b"], und_b)
                     + discriminator_loss(nets["D_local_A"], ctx["real_a"], und_a))
            total = total + local
            logged["D_local"] = float(local.detach())
        return total, logged


class GCCDiCyc(DiCyc):
    """DiCyc with gradient-correlation alignment, on the papers' deformation modules: the tie and
    the bounds were measured with NMI only, so they are not this variant's default."""

    name = "gcc-dicyc"
    description = "DiCyc with gradient-correlation alignment instead of NMI (the papers' deformation modules)"
    similarity = "gc"
    defaults = dict(DiCyc.defaults, **PAPERS_DEFORMATION)


class MINDDiCyc(DiCyc):
    """DiCyc with MIND alignment (λ 5), on the papers' deformation modules (see :class:`GCCDiCyc`)."""

    name = "mind-dicyc"
    description = "DiCyc with MIND alignment instead of NMI (the papers' deformation modules)"
    similarity = "mind"
    defaults = dict(DiCyc.defaults, lambda_align=5.0, **PAPERS_DEFORMATION)


class DicycleGAN(DiCyc):
    """DicycleGAN (Wang et al., MICCAI SASHIMI 2018): DiCyc's losses with offset convolutions
    alone (no TPS transformer), generators and offsets trained jointly (no EM)."""

    name = "dicyclegan"
    description = "DicycleGAN (Wang et al. 2018): offset convs, NMI alignment, dicyc loss, joint training"
    defaults = {key: value for key, value in dict(DiCyc.defaults, **PAPERS_DEFORMATION).items()
                if not key.startswith("tps_") and key != "em"}
    use_tps = False


class UNIT(Recipe):
    """UNIT (Liu, Breuel & Kautz, NIPS 2017): coupled VAE-GANs with a shared latent space.

    Per-domain encoders E_A, E_B and decoders G_A, G_B whose high-level layers are shared
    (:mod:`dicyc.nets.unit`); the training networks are the two translators G_AB = E_A→G_B
    and G_BA = E_B→G_A holding one shared module, so the model file stores exactly what
    synthesis runs (μ, no noise). One generator step, z = μ + ε with ε ~ N(0, I):

        L = λ_gan (LSGAN(D_B(G_B(z_a))) + LSGAN(D_A(G_A(z_b))))          translation
          + λ_kl (mean μ_a² + mean μ_b²)                                   VAE prior (UNIT's KL form)
          + λ_recon (|G_A(z_a) − a| + |G_B(z_b) − b|)                      within-domain reconstruction
          + λ_cycle_kl (mean μ_ab² + mean μ_ba²)                           KL of the translations' codes
          + λ_cycle (|G_A(E_B(G_B(z_a)) + ε) − a| + |G_B(E_A(G_A(z_b)) + ε) − b|)   cycle reconstruction

    Weights: the paper's λ0..λ4 = 10, 0.1, 100, 0.1, 100 divided by 10 — 1, 0.01, 10, 0.01,
    10 — so the LSGAN term has weight 1 as in CycleGAN (the same values UNIT's own PyTorch
    release uses: gan_w 1, recon_kl_w 0.01, recon_x_w 10, recon_kl_cyc_w 0.01, recon_x_cyc_w 10).
    L1 terms are means, as the other recipes' cycle loss. The discriminator step is CycleGAN's
    (70×70 PatchGANs, image pools of the translations).
    """

    name = "unit"
    description = "UNIT (Liu et al. 2017): shared-latent VAE-GAN, weight-shared encoders/decoders, KL + cycle"
    defaults = {
        "shared_blocks": 1,
        "lambda_gan": 1.0,
        "lambda_kl": 0.01,
        "lambda_recon": 10.0,
        "lambda_cycle_kl": 0.01,
        "lambda_cycle": 10.0,
    }

    def option(self, key):
        """A method option from the configuration, else its default here."""
        return self.config.get(key, self.defaults[key])

    def architecture(self):
        arch = super().architecture()
        arch["generator"] = "unit"
        arch["shared_blocks"] = int(self.option("shared_blocks"))
        return arch

    def build_networks(self):
        from dicyc.nets import build_discriminator, build_unit_pair

        try:
            nets = build_unit_pair(self.architecture())  # G_AB, G_BA: one shared module inside both
        except ValueError as exc:  # e.g. shared_blocks 0
            raise DicycError(f"the unit method cannot build its networks: {exc}.") from None
        nets["D_A"] = build_discriminator(int(self.config["ndf"]), input_nc=self.context)
        nets["D_B"] = build_discriminator(int(self.config["ndf"]), input_nc=self.context)
        return nets

    def steps(self):
        return [("G", self.generator_step), ("D", self.discriminator_step)]

    @staticmethod
    def sample(mu):
        """z = μ + ε, ε ~ N(0, I): q(z | x) is a unit-variance Gaussian around the encoder's output."""
        import torch

        return mu + torch.randn_like(mu)

    def generator_step(self, nets, ctx):
        from dicyc.losses import l1, lsgan_loss

        g_ab, g_ba = nets["G_AB"], nets["G_BA"]  # G_AB: E_A → G_B; G_BA: E_B → G_A
        a, b = ctx["real_a"], ctx["real_b"]
        mu_a, mu_b = g_ab.encode(a), g_ba.encode(b)
        z_a, z_b = self.sample(mu_a), self.sample(mu_b)
        rec_a, rec_b = g_ba.decode(z_a), g_ab.decode(z_b)
        fake_b, fake_a = g_ab.decode(z_a), g_ba.decode(z_b)
        ctx["fake_b"], ctx["fake_a"] = fake_b, fake_a
        mu_ab, mu_ba = g_ba.encode(fake_b), g_ab.encode(fake_a)  # codes of the translations
        cyc_a, cyc_b = g_ba.decode(self.sample(mu_ab)), g_ab.decode(self.sample(mu_ba))

        def kl(mu):
            return (mu ** 2).mean()

        terms = {
            "adv_ab": self.option("lambda_gan") * lsgan_loss(nets["D_B"](fake_b), True),
            "adv_ba": self.option("lambda_gan") * lsgan_loss(nets["D_A"](fake_a), True),
            "kl": self.option("lambda_kl") * (kl(mu_a) + kl(mu_b)),
            "recon": self.option("lambda_recon") * (l1(rec_a, a) + l1(rec_b, b)),
            "cycle_kl": self.option("lambda_cycle_kl") * (kl(mu_ab) + kl(mu_ba)),
            "cycle": self.option("lambda_cycle") * (l1(cyc_a, a) + l1(cyc_b, b)),
        }
        total = sum(terms.values())
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["G"] = float(total.detach())
        return total, logged

    def discriminator_step(self, nets, ctx):
        """LSGAN discriminators on real images and pooled translations, as in CycleGAN."""
        return CycleGAN.discriminator_step(self, nets, ctx)


class CycleMedGAN(CycleGAN):
    """Cycle-MedGAN (Armanious et al. 2019): the cycle is also judged in feature space.

    A cycle-perceptual loss (L1 between feature maps of the real and the reconstructed image)
    and a cycle-style loss (between their Gram matrices) use a frozen feature extractor per
    domain. The paper pre-trained a BiGAN discriminator on CT; no weights can be downloaded
    here, so each extractor is pre-trained by this project as the encoder of an autoencoder on
    that domain's own training slices (:func:`dicyc.similarity.pretrain_feature_extractor`), and
    the pre-training is recorded in the model card. The extractors are training-only: the model
    file holds the generators alone.
    """

    name = "cycle-medgan"
    description = "Cycle-MedGAN (Armanious et al. 2019): cycle-perceptual + cycle-style losses, own pre-trained extractor"
    # perceptual ≈ the L1 cycle term at initialisation on the head pair, style a small correction
    defaults = {"lambda_perceptual": 10.0, "lambda_style": 1e4, "extractor_steps": 200, "extractor_slices": 256}

    def prepare(self, data_a, data_b, device, log):
        import numpy as np
        import torch

        from dicyc.similarity import pretrain_feature_extractor

        self.extractors, self.details = {}, {}
        for key, data in (("a", data_a), ("b", data_b)):
            pool = [(v, k) for v, ks in enumerate(data.body_slices) for k in ks]
            keep = np.linspace(0, len(pool) - 1, min(len(pool), int(self.config["extractor_slices"]))).round().astype(int)
            slices = np.stack([np.asarray(data.volumes[pool[i][0]][pool[i][1]], dtype=np.float32) for i in keep])
            log(f"pre-training the {key.upper()} feature extractor on {len(slices)} slices "
                f"({int(self.config['extractor_steps'])} steps)")
            extractor, info = pretrain_feature_extractor(
                torch.from_numpy(slices), steps=int(self.config["extractor_steps"]), seed=int(self.config["seed"]),
                device=device,
            )
            self.extractors[key], self.details[key] = extractor, info

    def card_details(self):
        return {"feature_extractors": getattr(self, "details", {})}

    def build_networks(self):
        nets = super().build_networks()
        nets["F_A"], nets["F_B"] = self.extractors["a"], self.extractors["b"]  # frozen: in no optimiser group
        return nets

    def generator_losses(self, nets, ctx):
        from dicyc.similarity import perceptual_loss, style_loss

        terms = super().generator_losses(nets, ctx)
        # the extractors are pre-trained on single slices: a 2.5-D slab is judged slice by slice
        feats = {
            "a": (nets["F_A"](per_slice(ctx["real_a"])), nets["F_A"](per_slice(ctx["rec_a"]))),
            "b": (nets["F_B"](per_slice(ctx["real_b"])), nets["F_B"](per_slice(ctx["rec_b"]))),
        }
        terms["cycle_perceptual"] = self.config["lambda_perceptual"] * sum(perceptual_loss(r, c) for r, c in feats.values())
        terms["cycle_style"] = self.config["lambda_style"] * sum(style_loss(r, c) for r, c in feats.values())
        return terms


#: name → recipe class, in the order ``dicyc methods`` lists them.
METHODS = {cls.name: cls for cls in (
    CycleGAN, NMICycleGAN, GCCycleGAN, MINDCycleGAN, DiCyc, GCCDiCyc, MINDDiCyc, DicycleGAN, CycleMedGAN, UNIT,
)}


def get_method(name):
    """The recipe class for ``name``; unknown names get the list of valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise DicycError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)} (see `dicyc methods`).") from None


def list_methods():
    """(name, one-line description) for every registered method."""
    return [(name, cls.description) for name, cls in METHODS.items()]
