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

    def prepare(self, data_a, data_b, device, log):
        """Work needed once before training (e.g. pre-training a feature extractor)."""

    def card_details(self):
        """Method-specific facts recorded in the model card (e.g. how an extractor was pre-trained)."""
        return {}

    # -- networks --------------------------------------------------------------
    def architecture(self):
        """The generator architecture recorded in the model card (what synthesis rebuilds)."""
        c = self.config
        return {
            "generator": "resnet",
            "ngf": int(c["ngf"]),
            "n_blocks": int(c["n_blocks"]),
            "upsample": c["upsample"],
            "input_nc": 1,
            "output_nc": 1,
        }

    def build_networks(self):
        from dicyc.nets import build_discriminator, build_generator, init_weights

        nets = {
            "G_AB": build_generator(self.architecture()),
            "G_BA": build_generator(self.architecture()),
            "D_A": build_discriminator(int(self.config["ndf"])),
            "D_B": build_discriminator(int(self.config["ndf"])),
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


class AlignedCycleGAN(CycleGAN):
    """CycleGAN plus a source–synthesis alignment term on each direction.

    ``similarity`` names the measure (``nmi``, ``gc`` or ``mind``): the term asks the synthetic
    image to keep the structure of the image it came from, the weakness these baselines attack.
    """

    similarity = "nmi"
    defaults = {"lambda_align": 0.9}

    def alignment(self, source, synthetic):
        """Loss (≥ 0) that is small when ``synthetic`` keeps the structure of ``source``."""
        from dicyc import similarity as sim

        if self.similarity == "nmi":
            return 1.0 - sim.nmi(source, synthetic).mean()
        if self.similarity == "gc":
            return 1.0 - sim.gradient_correlation(source, synthetic).mean()
        if self.similarity == "mind":
            return sim.mind_loss(source, synthetic)
        raise ValueError(f"unknown similarity {self.similarity!r}")

    def generator_losses(self, nets, ctx):
        terms = super().generator_losses(nets, ctx)
        lam = self.config["lambda_align"]
        terms["align"] = lam * (self.alignment(ctx["real_a"], ctx["fake_b"]) + self.alignment(ctx["real_b"], ctx["fake_a"]))
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


class DiCyc(AlignedCycleGAN):
    """DiCyc (Wang et al., Information Fusion 2021).

    Each generator G runs twice with the same parameters θ: the *deformed* pass G_T(x) =
    G(x | θ, θ_T) goes through offset fields in front of the input block, both down-sampling
    convolutions and the residual stack (``offset_stages``), and a thin-plate-spline
    transformer on the latent features (reading the source latent and a target-domain image's
    latent); the *undeformed* pass G(x) = G(x | θ) bypasses them. The adversarial loss judges
    the deformed outputs, so the deformations a domain carries are absorbed by θ_T; the
    alignment loss keeps the undeformed output aligned with its source; the cycle loss runs
    undeformed; and the deformation-invariant cycle loss asks deforming in the first or in the
    second half of a cycle to give the same image:

        L_dicyc = |G_BA,T(G_AB(a)) − G_BA(G_AB,T(a))| + |G_AB,T(G_BA(b)) − G_AB(G_BA,T(b))|

    Training alternates an E step that updates only the global (TPS) transformers and an M
    step that updates generators and offset fields from both passes with one backward pass.
    Synthesis uses the undeformed pass only: the model file holds the generators alone and
    costs what a CycleGAN costs.

    Choices of ours, all found on the quality benchmark (README, *Benchmarks*). With
    free per-pixel offsets and the adversarial loss on the deformed pass alone, the generator
    learns two modes: a deformed pass that fools the discriminator with shredded anatomy, and
    an undeformed pass -- the one synthesis uses -- that nothing asks to look real, which came
    out flat and low in contrast. So (1) offset fields are smooth (``offset_grid`` cells per
    side) and bounded (``offset_max_displacement``), which keeps θ_T a deformation; and
    (2) the undeformed outputs also get the adversarial loss (weight
    ``lambda_adv_undeformed``); the alignment and dicyc losses keep them in the source's
    geometry while the deformed pass still takes up the domain's deformation. Since the
    undeformed pass now feels the discriminator, the alignment weight is 2 rather than the
    0.9 of the NMI baseline. The bounds are tight (offsets 0.05 and TPS 0.1 of half a map's
    side, about 15 % of the slice in all): looser ones let the deformed pass shred anatomy.
    Each step was measured on the deformed setting of ``dicyc bench quality --quick`` (SSIM
    PD→T2 / T2→PD, seed 0; CycleGAN 0.319 / 0.300): free offsets, deformed pass judged alone
    0.244 / 0.427 (the benchmark's first run); then, in single training runs of that size,
    smooth offsets 0.273 / 0.432; + adversarial loss on the undeformed pass 0.336 / 0.418;
    + λ_align 2 0.381 / 0.414; + tight bounds 0.392 / 0.440 (seed 1: 0.363 / 0.421). The
    benchmark's own rerun with these defaults gave 0.390 / 0.424.
    """

    name = "dicyc"
    description = "DiCyc (Wang et al. 2021): offset convs + TPS transformer, NMI alignment, dicyc loss, EM training"
    defaults = {"lambda_align": 2.0, "lambda_dicyc": 10.0, "lambda_adv_undeformed": 1.0, "tps_grid": 6,
                "tps_max_displacement": 0.1, "offset_grid": 8, "offset_max_displacement": 0.05,
                "offset_stages": ["stem", "down1", "down2", "block0"]}
    use_tps = True

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

    def build_networks(self):
        from dicyc.nets.warps import Deformation, TPSTransformer

        nets = super().build_networks()
        for direction in ("AB", "BA"):
            g = nets[f"G_{direction}"]
            # the "lasagne" structure by default: offsets in front of the input block, both
            # down-sampling convolutions and the residual stack (its first block)
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
        return nets

    def optimizer_groups(self):
        groups = {"G": ["G_AB", "G_BA", "O_AB", "O_BA"], "D": ["D_A", "D_B"]}
        if self.use_tps:
            groups["T"] = ["T_AB", "T_BA"]
        return groups

    def steps(self):
        steps = [("G", self.generator_step), ("D", self.discriminator_step)]
        return ([("T", self.transformer_step)] if self.use_tps else []) + steps

    # -- the two passes ----------------------------------------------------------
    def deformed(self, nets, direction, x, ctx):
        """G_T(x): the generator through its offset fields (and TPS on the latent features)."""
        g = nets[f"G_{direction}"]
        offsets = nets[f"O_{direction}"].hook()
        tps = nets.get(f"T_{direction}")
        if tps is None:
            return g(x, warp=offsets)
        target = ctx["target_latent_" + direction]

        def warp(stage, features):
            return tps(features, target) if stage == "latent" else offsets(stage, features)

        return g(x, warp=warp)

    def target_latents(self, nets, ctx):
        """Latent features of a target-domain image for each direction's TPS transformer."""
        import torch

        if not self.use_tps or "target_latent_AB" in ctx:
            return
        with torch.no_grad():
            ctx["target_latent_AB"] = nets["G_BA"].encode(ctx["real_b"])
            ctx["target_latent_BA"] = nets["G_AB"].encode(ctx["real_a"])

    def adversarial_terms(self, nets, ctx):
        """Deformed outputs G_T(x) and their adversarial losses (the discriminators judge these)."""
        from dicyc.losses import lsgan_loss

        self.target_latents(nets, ctx)
        fake_b_t = self.deformed(nets, "AB", ctx["real_a"], ctx)
        fake_a_t = self.deformed(nets, "BA", ctx["real_b"], ctx)
        ctx["fake_b"], ctx["fake_a"] = fake_b_t, fake_a_t
        return {
            "adv_ab": lsgan_loss(nets["D_B"](fake_b_t), True),
            "adv_ba": lsgan_loss(nets["D_A"](fake_a_t), True),
        }

    def deformation_terms(self, nets, ctx, undeformed):
        """Adversarial losses on the deformed outputs and the deformation-invariant cycle loss."""
        from dicyc.losses import l1

        terms = self.adversarial_terms(nets, ctx)
        fake_b_t, fake_a_t = ctx["fake_b"], ctx["fake_a"]
        ub, ua = undeformed
        dicyc = l1(self.deformed(nets, "BA", ub, ctx), nets["G_BA"](fake_b_t)) + l1(
            self.deformed(nets, "AB", ua, ctx), nets["G_AB"](fake_a_t)
        )
        terms["dicyc"] = self.config["lambda_dicyc"] * dicyc
        return terms

    def transformer_step(self, nets, ctx):
        """E step: only the global transformers move, so the deformed outputs look like the target
        domain — the transformer absorbs the domain's global deformation. (The M step's dicyc term
        then makes the generators agree with it.)"""
        terms = self.adversarial_terms(nets, ctx)
        total = sum(terms.values())
        return total, {"T": float(total.detach())}

    def generator_step(self, nets, ctx):
        """M step: generators and offset fields from the deformed and undeformed passes, one backward."""
        from dicyc.losses import l1

        a, b = ctx["real_a"], ctx["real_b"]
        fake_b, fake_a = nets["G_AB"](a), nets["G_BA"](b)
        terms = self.deformation_terms(nets, ctx, (fake_b, fake_a))
        terms["cycle"] = self.config["lambda_cycle"] * (l1(nets["G_BA"](fake_b), a) + l1(nets["G_AB"](fake_a), b))
        terms["align"] = self.config["lambda_align"] * (self.alignment(a, fake_b) + self.alignment(b, fake_a))
        w = float(self.config["lambda_adv_undeformed"])
        if w > 0:  # the synthesis (undeformed) outputs must look real too; see the class docstring
            from dicyc.losses import lsgan_loss

            terms["adv_und"] = w * (lsgan_loss(nets["D_B"](fake_b), True) + lsgan_loss(nets["D_A"](fake_a), True))
        total = sum(terms.values())
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["G"] = float(total.detach())
        return total, logged


class GCCDiCyc(DiCyc):
    name = "gcc-dicyc"
    description = "DiCyc with gradient-correlation alignment instead of NMI"
    similarity = "gc"


class MINDDiCyc(DiCyc):
    name = "mind-dicyc"
    description = "DiCyc with MIND alignment instead of NMI"
    similarity = "mind"
    defaults = dict(DiCyc.defaults, lambda_align=5.0)


class DicycleGAN(DiCyc):
    """DicycleGAN (Wang et al., MICCAI SASHIMI 2018): offset convolutions, NMI and the dicyc
    loss, no TPS transformer, generators and offsets trained jointly (no EM)."""

    name = "dicyclegan"
    description = "DicycleGAN (Wang et al. 2018): offset convs, NMI alignment, dicyc loss, joint training"
    defaults = {key: value for key, value in DiCyc.defaults.items() if not key.startswith("tps_")}
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
        nets["D_A"] = build_discriminator(int(self.config["ndf"]))
        nets["D_B"] = build_discriminator(int(self.config["ndf"]))
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
        feats = {
            "a": (nets["F_A"](ctx["real_a"]), nets["F_A"](ctx["rec_a"])),
            "b": (nets["F_B"](ctx["real_b"]), nets["F_B"](ctx["rec_b"])),
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
