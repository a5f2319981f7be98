"""Model files for the Synthesis panel: what a card says, and where models are found.

Models come from two kinds of folder: the *bundled* ones (the extension's ``Resources/Models``,
read-only, and the folders of the ``DICYC_MODELS`` environment variable) and the user's *models
folder*, where the panel can add a model file, list it and remove it again. Nothing here loads
weights: a card is read from the safetensors header only.
"""

import os
import shutil
from pathlib import Path

import dicyc
from dicyc.errors import DicycError

#: Environment variable: extra folders (os.pathsep-separated) searched for bundled/shared models.
MODELS_ENV = "DICYC_MODELS"
#: The user's models folder unless the panel is told another one (Slicer setting DiCyc/ModelsFolder).
DEFAULT_USER_MODELS_FOLDER = Path("~") / ".dicyc" / "models"


def target_domain(card, direction="a2b"):
    """(source, target) domain dicts of a model card for ``direction``."""
    domains = card.get("domains") or {}
    src, tgt = ("a", "b") if direction == "a2b" else ("b", "a")
    return domains.get(src) or {}, domains.get(tgt) or {}


def _domain_label(domain):
    name = str(domain.get("name") or domain.get("modality") or "?")
    modality = domain.get("modality")
    return name if not modality or str(modality) == name else f"{name} ({modality})"


def model_summary(path):
    """What the panel shows about a model file, from its card only (no weights loaded).

    Returns a dict: ``path``, ``method``, ``domain_a``, ``domain_b`` (labels), ``modality_a``,
    ``modality_b``, ``spacing`` (mm, in-plane), ``slice_size``, ``iterations``, ``context_slices``
    (1 for a 2-D model), ``code_version``,
    ``created`` and ``text`` (a few lines for a label); on a bad file only ``path``, ``error``
    (one sentence) and ``text``.
    """
    from dicyc.modelfile import read_card

    try:
        card = read_card(path)
    except DicycError as exc:
        return {"path": str(path), "error": str(exc), "text": f"Not usable: {exc}"}
    domains = card.get("domains") or {}
    a, b = domains.get("a") or {}, domains.get("b") or {}
    training = card.get("training") or {}
    arch = card.get("architecture") or {}
    spacing = card.get("spacing")
    summary = {
        "path": str(path),
        "method": card.get("method"),
        "domain_a": _domain_label(a),
        "domain_b": _domain_label(b),
        "modality_a": a.get("modality"),
        "modality_b": b.get("modality"),
        "spacing": list(spacing) if isinstance(spacing, (list, tuple)) else spacing,
        "slice_size": card.get("slice_size"),
        "iterations": training.get("iterations_done"),
        "architecture": f"{arch.get('generator', '?')} ngf {arch.get('ngf', '?')}, {arch.get('n_blocks', '?')} blocks",
        "context_slices": card.get("context_slices", 1),
        "code_version": card.get("code_version"),
        "created": card.get("created"),
    }
    spacing_text = " × ".join(f"{float(s):g}" for s in spacing) + " mm" if isinstance(spacing, (list, tuple)) else "?"
    lines = [
        f"Method: {summary['method']}",
        f"Domains: A = {summary['domain_a']}, B = {summary['domain_b']} (a2b: A → B)",
        f"Training spacing: {spacing_text}, slice size {summary['slice_size']}",
        f"Generator: {summary['architecture']}"
        + (f", 2.5-D ({summary['context_slices']} neighbouring slices)" if summary["context_slices"] != 1 else "")
        + (f", {summary['iterations']} iterations" if summary["iterations"] is not None else ""),
    ]
    summary["text"] = "\n".join(lines)
    return summary


def model_search_folders():
    """Folders searched for ``.safetensors`` models, in order.

    1. ``<folder holding dicyc>/Resources/Models`` — in a source checkout that is the repository's
       ``Resources/Models``; in an installed extension ``dicyc/`` sits in the extension's
       ``qt-scripted-modules`` folder, next to the module scripts, so this is the modules'
       ``Resources/Models`` (where the extension's CMake installs the bundled demo model);
    2. ``DiCycSynthesis/Resources/Models`` next to this module;
    3. every folder in the ``DICYC_MODELS`` environment variable.
    """
    folders = [
        Path(dicyc.__file__).resolve().parents[1] / "Resources" / "Models",
        Path(__file__).resolve().parents[1] / "Resources" / "Models",
    ]
    folders += [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


#: the bundled model the panel, the demo and the self-test choose first: DiCyc, the reason the
#: extension exists; CycleGAN's model, trained on the same data and budget, is listed after it
DEFAULT_BUNDLED_MODEL = "head-mr2ct-dicyc.safetensors"


def bundled_models():
    """The ``.safetensors`` files of :func:`model_search_folders` (may be empty): per folder,
    :data:`DEFAULT_BUNDLED_MODEL` first, then the others sorted by name."""
    found = []
    for folder in model_search_folders():
        if folder.is_dir():
            found += sorted((p for p in folder.glob("*.safetensors") if p.is_file()),
                            key=lambda p: (p.name != DEFAULT_BUNDLED_MODEL, p.name.lower()))
    return found


# ===================================================================== the user's models folder
def user_models_folder(folder=None):
    """The user's models folder: ``folder`` if given (the panel passes its setting), else
    ``~/.dicyc/models``. Not created here."""
    return Path(folder).expanduser() if folder else DEFAULT_USER_MODELS_FOLDER.expanduser()


def _same_file(a, b):
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def user_models(folder=None):
    """The ``.safetensors`` files in the user's models folder, sorted by name (empty if it does not exist)."""
    folder = user_models_folder(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.safetensors") if p.is_file()), key=lambda p: p.name.lower())


def list_models(folder=None):
    """Every model the panel offers, bundled ones first: a list of dicts with ``path`` (Path),
    ``name`` (file name) and ``kind`` (``"bundled"`` or ``"user"``). A file found twice is listed once."""
    entries = []
    for kind, paths in (("bundled", bundled_models()), ("user", user_models(folder))):
        for path in paths:
            if any(_same_file(path, e["path"]) for e in entries):
                continue
            entries.append({"path": Path(path), "name": Path(path).name, "kind": kind})
    return entries


def is_user_model(path, folder=None):
    """True when ``path`` is a file directly inside the user's models folder."""
    folder = user_models_folder(folder)
    return Path(path).is_file() and _same_file(Path(path).parent, folder)


def add_model(path, folder=None):
    """Copy the model file ``path`` into the user's models folder (created if needed); returns the copy.

    The card is read first, so only real DiCyc model files go in. A file already in the folder
    is returned as is; a different file with the same name is refused, never overwritten.
    """
    from dicyc.atomic import atomic_path
    from dicyc.modelfile import read_card

    source = Path(path).expanduser()
    if not source.is_file():
        raise DicycError(f"{source} does not exist.")
    read_card(source)  # refuses anything that is not a DiCyc model file, in one sentence
    folder = user_models_folder(folder)
    target = folder / (source.name if source.name.endswith(".safetensors") else source.name + ".safetensors")
    if _same_file(source, target):
        return target
    if target.exists():
        raise DicycError(f"{folder} already holds a model named {target.name}; rename the file or remove that one first.")
    try:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    except OSError as exc:
        raise DicycError(f"could not copy {source.name} into {folder}: {exc.strerror or exc}.") from None
    return target


def remove_model(path, folder=None):
    """Delete a model from the user's models folder. Bundled models and files elsewhere are refused."""
    path = Path(path)
    if not is_user_model(path, folder):
        raise DicycError(f"{path.name} is not in your models folder ({user_models_folder(folder)}); "
                         "only models added there can be removed.")
    try:
        path.unlink()
    except OSError as exc:
        raise DicycError(f"could not remove {path}: {exc.strerror or exc}.") from None
