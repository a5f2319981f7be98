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

    def __init__(self, config):
        self.config = config

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


#: name → recipe class, in the order ``dicyc methods`` lists them.
METHODS = {cls.name: cls for cls in (CycleGAN,)}


def get_method(name):
    """The recipe class for ``name``; unknown names get the list of valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise DicycError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)} (see `dicyc methods`).") from None


def list_methods():
    """(name, one-line description) for every registered method."""
    return [(name, cls.description) for name, cls in METHODS.items()]
