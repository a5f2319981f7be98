"""Training logic of the DiCyc Training module: no qt, no widgets, the scene is a parameter.

What the panel does, as plain Python:

* turn the data the user picked — files, folders, list files, or volume nodes loaded in the
  scene — into volume specs for ``dicyc train`` (nodes are written to files with their exact
  geometry);
* build the ``dicyc train`` command line from the panel's options;
* run it in the background (:class:`dicyc.background.BackgroundProcess`: a child process, reader
  threads and a queue) and follow its JSON-lines events with :meth:`TrainingLogic.poll`, which
  never blocks — the widget calls it from a ``QTimer``, the tests call it in a loop;
* stop the run (the whole process tree) and resume it from its last checkpoint; refuse to start
  a second trainer on a run folder another one holds (its OS lock, :mod:`dicyc.runlock`);
* keep a loss table and a plot chart in the scene up to date — new rows are appended as they
  arrive, and once the table is long its older rows are thinned for display, so a poll costs
  the same after 10 000 iterations as after 10;
* find the model file a finished run wrote.

Only numpy, VTK, Slicer's MRML classes and ``dicyc`` are imported, so this runs under the
``slicer-core`` wheel (pytest) exactly as inside 3D Slicer.
"""

import json
import os
import re
from pathlib import Path

import vtk

from dicyc.background import BackgroundProcess, dicyc_command, pid_alive
from dicyc.errors import DicycError
from dicyc.events import format_duration, read_events
from dicyc.runlock import in_use_message
from dicyc.volume import write_volume

#: file a run started from this module writes its events to (``--progress-jsonl``), in the run folder
PROGRESS_FILE = "progress.jsonl"
#: training options that have no command-line flag are written here and passed with ``--config``
OPTIONS_FILE = "slicer_options.json"
#: node attribute marking the loss table / chart / series this module manages
NODE_ATTRIBUTE = "DiCyc.TrainingLosses"
#: the loss table shows at most this many rows: every one of the newest RECENT_LOSS_ROWS, and an
#: evenly thinned selection (every 2nd, 4th, … logged iteration) of the older ones
MAX_LOSS_ROWS = 2000
RECENT_LOSS_ROWS = 500

#: colours of the loss curves, in the order the losses first appear (Tableau 10)
_PALETTE = [
    (0.12, 0.47, 0.71), (1.00, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
]


# ===================================================================== nodes → files
def volume_from_node(node):
    """The node's voxels and world geometry (linear parent transform applied), for writing to a file.

    One conversion serves both modules: :func:`DiCycCommonLib.nodes.volume_from_node`.
    """
    from DiCycCommonLib.nodes import volume_from_node as convert

    return convert(node, world=True)


def _safe_name(text):
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return name[:60] or "volume"


def _is_volume_node(item):
    return hasattr(item, "IsA") and item.IsA("vtkMRMLVolumeNode")


# ===================================================================== run state
def _loss_names(history, known=()):
    """Loss names of ``history`` rows (``{"iteration", "losses"}``) in the order they first appear,
    after the names already ``known``."""
    names = list(known)
    for row in history:
        for name in row["losses"]:
            if name not in names:
                names.append(name)
    return names


class TrainingState:
    """What is known about a training run, updated from its events.

    Attributes: ``running``, ``iteration``, ``total`` (iterations), ``epoch``, ``eta_s``,
    ``elapsed_s``, ``lr``, ``losses`` (latest means), ``history`` (list of ``{"iteration",
    "losses"}``, one per ``iteration`` event, earlier runs of a resumed folder included),
    ``preview`` (latest preview PNG), ``checkpoint_iteration``, ``start_iteration`` (where this
    process started: > 0 after a resume), ``done``, ``model`` (model file once done), ``error``
    (a sentence once failed), ``cancelled``, ``message``, ``returncode``, ``log`` (recent output
    lines) and ``new_log`` (lines of the last poll), ``events`` (events of the last poll).
    ``ended``: the run reported its end; ``finished``: it ended and its process has exited.
    """

    LOG_LINES = 500

    def __init__(self, out_dir=None):
        self.out_dir = str(out_dir) if out_dir is not None else None
        self.running = False
        self.iteration = 0
        self.total = None
        self.epoch = 0
        self.eta_s = None
        self.elapsed_s = None
        self.lr = None
        self.losses = {}
        self.history = []
        self.preview = None
        self.checkpoint_iteration = None
        self.start_iteration = None
        self.done = False
        self.model = None
        self.error = None
        self.cancelled = False
        self.message = ""
        self.returncode = None
        self.log = []
        self.new_log = []
        self.events = []
        self.history_changed = False
        #: bumped whenever rows already in ``history`` are removed or replaced (a resume logging
        #: again after its checkpoint), so a display that only appends knows to start over
        self.history_edits = 0

    # ----------------------------------------------------------------- derived
    @property
    def fraction(self):
        """Progress in [0, 1] (0 while the total is unknown)."""
        if not self.total:
            return 1.0 if self.done else 0.0
        return min(max(self.iteration / float(self.total), 0.0), 1.0)

    @property
    def ended(self):
        """True once the run reported its end: done, failed or cancelled."""
        return self.done or self.error is not None or self.cancelled

    @property
    def finished(self):
        """True once the run ended and its process has exited (nothing more will arrive)."""
        return self.ended and not self.running

    @property
    def loss_names(self):
        """Loss names in the order they first appear."""
        return _loss_names(self.history)

    def eta_text(self):
        """'ETA 02:13' while running, '' otherwise."""
        if self.running and not self.ended and self.eta_s is not None:
            return f"ETA {format_duration(self.eta_s)}"
        return ""

    def status_text(self):
        """One line for the panel: where the run is, or how it ended."""
        if self.error is not None:
            return f"Failed: {self.error}"
        if self.cancelled:
            at = f" at iteration {self.iteration}" if self.iteration else ""
            return f"Stopped{at}; Resume continues from the last checkpoint" + (
                f" (iteration {self.checkpoint_iteration})." if self.checkpoint_iteration else ".")
        if self.done:
            return f"Done: {self.message or 'finished'} after {self.iteration} iterations."
        if self.total:
            parts = [f"iteration {self.iteration}/{self.total}"]
            if self.epoch:
                parts.append(f"epoch {self.epoch}")
            if self.eta_s is not None:
                parts.append(self.eta_text())
            return "Training: " + ", ".join(parts)
        return "Starting…" if self.running else ""

    # ----------------------------------------------------------------- updating
    def add_history(self, iteration, losses):
        # a resumed run repeats the iterations after its last checkpoint: keep the newest values
        while self.history and self.history[-1]["iteration"] >= iteration:
            self.history.pop()
            self.history_edits += 1
        self.history.append({"iteration": int(iteration), "losses": dict(losses)})
        self.history_changed = True

    def apply(self, event):
        """Update from one event (training event or ``{"event": "log", ...}``)."""
        kind = event.get("event")
        if kind == "log":
            line = str(event.get("message", ""))
            self.new_log.append(line)
            self.log.append(line)
            del self.log[: -self.LOG_LINES]
            return
        if "iteration" in event and event["iteration"] is not None:
            self.iteration = int(event["iteration"])
        if event.get("total_iterations") is not None:
            self.total = int(event["total_iterations"])
        if event.get("epoch") is not None:
            self.epoch = int(event["epoch"])
        if "elapsed_s" in event:
            self.elapsed_s = event["elapsed_s"]
        if kind == "start":
            self.start_iteration = self.iteration
            self.message = event.get("message", "")
            # forget losses logged after the checkpoint this run continues from
            kept = [row for row in self.history if row["iteration"] <= self.iteration]
            if len(kept) != len(self.history):
                self.history = kept
                self.history_changed = True
                self.history_edits += 1
        elif kind == "iteration":
            self.losses = dict(event.get("losses") or {})
            self.lr = event.get("lr", self.lr)
            self.eta_s = event.get("eta_s")
            self.add_history(self.iteration, self.losses)
        elif kind == "epoch":
            self.eta_s = event.get("eta_s", self.eta_s)
            self.message = event.get("message", self.message)
        elif kind == "checkpoint":
            self.checkpoint_iteration = self.iteration
        elif kind == "preview":
            self.preview = event.get("path")
        elif kind == "done":
            self.done = True
            self.eta_s = 0.0
            self.model = event.get("path")
            self.message = event.get("message", "finished")
        elif kind == "error":
            self.error = event.get("message") or "training failed."

    def apply_all(self, events):
        self.events = list(events)
        self.new_log = []
        for event in events:
            self.apply(event)
        return self

    @classmethod
    def from_events_file(cls, path, out_dir=None):
        """The state after every event of a JSON-lines file (e.g. a run folder's events.jsonl)."""
        state = cls(out_dir)
        if Path(path).exists():
            events, _ = read_events(path)
            state.apply_all(events)
        return state


# ===================================================================== the logic
class TrainingLogic:
    """Start, follow, stop and resume ``dicyc train`` runs; keep the loss plot in the scene.

    One run at a time per instance. The widget creates one and polls it from a ``QTimer``;
    scripts and tests use it directly::

        logic = TrainingLogic()
        a = logic.domain_inputs(scene, [mr_node], work_dir, prefix="A")
        b = logic.domain_inputs(scene, ["/data/ct/"], work_dir, prefix="B")
        logic.start("dicyc", a, b, "/runs/mr2ct", {"iterations": 2000, "device": "cuda"})
        while not logic.poll().finished: time.sleep(0.5)
        model = logic.model_path("/runs/mr2ct")
    """

    def __init__(self, python=None):
        #: interpreter that runs ``-m dicyc`` (inside Slicer: the PythonSlicer executable)
        self.python = python
        self.process = None
        self.state = None
        self.out_dir = None
        self._table = None
        self._chart = None
        self._shown = None  # what the loss table holds (see update_loss_plot)

    # ----------------------------------------------------------------- choices
    @staticmethod
    def methods():
        """(name, one-line description) of every training method (``dicyc methods``)."""
        from dicyc.methods import list_methods

        return list_methods()

    @staticmethod
    def default_options():
        """The engine's defaults for the options the panel shows (``dicyc.train.DEFAULT_CONFIG``)."""
        from dicyc.train import DEFAULT_CONFIG

        keys = ("ngf", "n_blocks", "ndf", "slice_size", "spacing", "batch_size", "iterations", "checkpoint_every",
                "modality_a", "modality_b")
        options = {key: DEFAULT_CONFIG[key] for key in keys}
        options["device"] = "auto"
        return options

    # ----------------------------------------------------------------- data
    @staticmethod
    def domain_inputs(scene, specs_or_nodes, work_dir, prefix="A"):
        """Volume specs for ``dicyc train --a/--b`` from what the user picked.

        ``specs_or_nodes``: one item or a list of items, each a volume node, a node ID of
        ``scene``, or a path (file, folder of images/DICOM series, or a text file listing
        volumes). Paths pass through unchanged (they must exist); each node is written to
        ``work_dir/<prefix>NN_<name>.nrrd`` with its exact geometry. Returns a list of paths
        (strings).
        """
        if specs_or_nodes is None:
            return []
        items = specs_or_nodes if isinstance(specs_or_nodes, (list, tuple)) else [specs_or_nodes]
        specs = []
        for index, item in enumerate(items):
            node = None
            if _is_volume_node(item):
                node = item
            elif isinstance(item, str) and scene is not None and not os.path.exists(item):
                candidate = scene.GetNodeByID(item)
                if candidate is not None and _is_volume_node(candidate):
                    node = candidate
            if node is not None:
                if work_dir is None:
                    raise DicycError("a folder to write the scene volumes to is needed (work_dir).")
                folder = Path(work_dir)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{prefix}{index:02d}_{_safe_name(node.GetName())}.nrrd"
                write_volume(volume_from_node(node), path)
                specs.append(str(path))
                continue
            if not isinstance(item, (str, os.PathLike)) or not str(item).strip():
                raise DicycError(f"domain {prefix}: {item!r} is neither a volume node nor a path.")
            path = Path(str(item).strip()).expanduser()
            if not path.exists():
                raise DicycError(f"domain {prefix}: {path} does not exist.")
            specs.append(str(path))
        return specs

    # ----------------------------------------------------------------- command
    @staticmethod
    def option_flags():
        """Option key → ``dicyc train`` flag (keys as in ``--config`` JSON, plus ``device``,
        ``epochs``, ``augment`` and ``config``)."""
        from dicyc.cli import TRAIN_OPTIONS

        flags = {key: flag for flag, key, _typ, _text in TRAIN_OPTIONS}
        flags.update({"spacing": "--spacing", "device": "--device", "config": "--config", "augment": "--no-augment",
                      "epochs": "--epochs"})
        return flags

    @classmethod
    def split_options(cls, options):
        """(options with a flag, training options that only a ``--config`` file can set).

        Keys may use ``-`` or ``_``; ``None`` values are dropped (the engine default applies).
        Unknown keys raise ``ValueError``.
        """
        from dicyc.train import DEFAULT_CONFIG

        flags = cls.option_flags()
        with_flag, config_only = {}, {}
        for raw_key, value in (options or {}).items():
            key = str(raw_key).replace("-", "_")
            if value is None:
                continue
            if key in flags:
                with_flag[key] = value
            elif key in DEFAULT_CONFIG:
                config_only[key] = value
            else:
                valid = sorted(set(flags) | set(DEFAULT_CONFIG))
                raise DicycError(f"unknown training option {raw_key!r}; valid: {', '.join(valid)}.")
        return with_flag, config_only

    @classmethod
    def build_command(cls, method, a, b, out_dir, options=None, resume=False, python=None, progress_path=None):
        """The ``dicyc train`` command (a list) for a new run, or for ``resume=True`` of ``out_dir``.

        ``options``: dict of training options (``ngf``, ``n_blocks``, ``slice_size``, ``spacing``
        (a number or two), ``batch_size``, ``iterations``, ``epochs``, ``checkpoint_every``,
        ``device``, ``modality_a``/``_b``, ``augment`` (False → ``--no-augment``), ``config``…).
        Options without a flag (e.g. ``log_every``) raise ``ValueError`` here: :meth:`start`
        writes them to a config file. A resumed run takes its method and data from the run
        folder, so ``method``, ``a`` and ``b`` are ignored then. Events go to
        ``progress_path`` (default ``out_dir/progress.jsonl``) through ``--progress-jsonl``.
        """
        with_flag, config_only = cls.split_options(options)
        if config_only:
            raise DicycError(
                f"option(s) {', '.join(sorted(config_only))} have no command-line flag; pass them to start() "
                "(written to a --config file) or in a config file."
            )
        out_dir = Path(out_dir)
        progress = Path(progress_path) if progress_path else out_dir / PROGRESS_FILE
        args = ["train", "--out", str(out_dir)]
        if resume:
            args.append("--resume")
        else:
            if method:
                args += ["--method", str(method)]
            a_specs = [str(s) for s in (a if isinstance(a, (list, tuple)) else [a])] if a else []
            b_specs = [str(s) for s in (b if isinstance(b, (list, tuple)) else [b])] if b else []
            if not a_specs or not b_specs:
                raise DicycError("training needs volumes for both domains A and B.")
            args += ["--a", *a_specs, "--b", *b_specs]
        flags = cls.option_flags()
        for key, value in with_flag.items():
            flag = flags[key]
            if key == "augment":
                if not value:
                    args.append(flag)
            elif key == "spacing":
                values = value if isinstance(value, (list, tuple)) else [value]
                args += [flag, *[_number(v) for v in values]]
            else:
                args += [flag, _number(value) if isinstance(value, (int, float)) else str(value)]
        args += ["--progress-jsonl", str(progress)]
        return dicyc_command(*args, python=python)

    # ----------------------------------------------------------------- running
    @property
    def running(self):
        return self.process is not None and self.process.running

    def start(self, method, a, b, out_dir, options=None, resume=False, env=None):
        """Start ``dicyc train`` in the background; returns the :class:`TrainingState`.

        Options without a flag (``log_every``, ``lambda_cycle``…) are written to
        ``out_dir/slicer_options.json`` and passed with ``--config``; a ``config`` file given
        as well is merged into it, these options winning. ``env``: variables added
        to the child's environment (e.g. ``DICYC_CACHE``). A resumed run's state starts from
        the losses and preview already in the folder's ``events.jsonl``.
        """
        if self.running:
            raise RuntimeError("a training run is already in progress; stop it first.")
        out_dir = Path(out_dir).expanduser().resolve()
        busy = self.in_use(out_dir)
        if busy:
            raise DicycError(busy)
        if not resume and self.has_checkpoint(out_dir):
            raise DicycError(f"{out_dir} already holds a training run; resume it or choose another output folder.")
        if resume and not self.has_checkpoint(out_dir):
            raise DicycError(f"{out_dir} holds no checkpoint to resume.")
        with_flag, config_only = self.split_options(options)
        out_dir.mkdir(parents=True, exist_ok=True)
        if config_only:  # one --config file: the user's options file, if any, under these
            from dicyc.atomic import write_text
            from dicyc.train import load_config_file

            merged = dict(load_config_file(with_flag["config"])) if with_flag.get("config") else {}
            merged.update(config_only)
            config_path = out_dir / OPTIONS_FILE
            write_text(config_path, json.dumps(merged, indent=2))  # atomic, as every output file
            with_flag["config"] = str(config_path)
        progress = out_dir / PROGRESS_FILE
        command = self.build_command(method, a, b, out_dir, with_flag, resume=resume, python=self.python,
                                     progress_path=progress)
        state = TrainingState.from_events_file(out_dir / "events.jsonl", out_dir) if resume else TrainingState(out_dir)
        state.done, state.error, state.cancelled, state.model, state.events = False, None, False, None, []
        state.history_changed = True
        state.running = True
        self.state, self.out_dir = state, out_dir
        self.process = BackgroundProcess(command, events_path=progress, env=env, cwd=str(out_dir))
        try:
            self.process.start()
        except OSError as exc:
            state.running = False
            state.error = f"could not run {command[0]}: {exc}"
            raise
        return state

    def resume(self, out_dir, options=None, env=None):
        """Continue the run in ``out_dir`` from its last checkpoint (``dicyc train --out DIR --resume``).

        ``options`` may change what a resume allows (``device``, ``iterations``…); the
        networks and data space of a run are fixed (the engine refuses such changes).
        """
        return self.start(None, None, None, out_dir, options, resume=True, env=env)

    def poll(self):
        """Read what arrived since the last call (never blocks); returns the :class:`TrainingState`.

        Once the process has ended without a ``done`` or ``error`` event (a crash, a kill),
        ``state.error`` says why.
        """
        state = self.state
        if state is None or self.process is None:
            return state
        finished = not self.process.running  # checked first: the poll after exit gets everything
        state.apply_all(self.process.poll())
        if finished:
            state.running = False
            state.returncode = self.process.returncode
            if not state.done and state.error is None and not state.cancelled:
                if self.process.cancelled:
                    state.cancelled = True
                elif state.returncode == 0:
                    state.done = True
                    state.model = state.model or self.model_path(self.out_dir, prefer="latest")
                else:
                    state.error = self.process.error_message() or f"training exited with status {state.returncode}."
        return state

    def stop(self, timeout=5):
        """Stop the run: the whole process tree ends before this returns. Returns True if it was running."""
        if self.process is None:
            return False
        was_running = self.process.cancel(timeout=timeout)
        if self.state is not None and was_running and not self.state.done:
            # what the process wrote before it ended is still read by the next poll()
            self.state.cancelled = True
        return was_running

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    def process_alive(self):
        """True while the child process exists (for checks after :meth:`stop`)."""
        return self.pid is not None and pid_alive(self.pid)

    # ----------------------------------------------------------------- results
    @staticmethod
    def in_use(out_dir):
        """One sentence when another trainer (another Slicer, a script, a ``dicyc train`` left
        running) holds ``out_dir``'s run lock; None when the folder is free."""
        if out_dir is None or not Path(out_dir).is_dir():
            return None
        return in_use_message(out_dir)

    @staticmethod
    def has_checkpoint(out_dir):
        return out_dir is not None and (Path(out_dir) / "checkpoint.safetensors").exists()

    @staticmethod
    def model_path(out_dir, prefer="best"):
        """The model file of a run: ``model_best.safetensors`` (``prefer="best"``) or
        ``model.safetensors`` (the latest checkpoint), whichever exists; None if neither."""
        out_dir = Path(out_dir)
        order = ["model_best.safetensors", "model.safetensors"]
        if prefer == "latest":
            order.reverse()
        for name in order:
            if (out_dir / name).exists():
                return str(out_dir / name)
        return None

    @staticmethod
    def model_summary(path):
        """One line about a model file from its card: method, domains, spacing, iterations."""
        from dicyc.modelfile import read_card

        card = read_card(path)
        domains = card.get("domains", {})
        a, b = domains.get("a", {}), domains.get("b", {})
        spacing = card.get("spacing") or []
        iterations = (card.get("training") or {}).get("iterations_done")
        text = f"{card.get('method', '?')}: {a.get('name', 'A')} ⇄ {b.get('name', 'B')}"
        if spacing:
            text += ", " + " × ".join(f"{s:g}" for s in spacing) + " mm"
        if card.get("slice_size"):
            text += f", {card['slice_size']} px slices"
        if iterations is not None:
            text += f", {iterations} iterations"
        return text

    # ----------------------------------------------------------------- loss plot
    @staticmethod
    def loss_table(scene, history, table=None, name="DiCyc training losses", rows=None):
        """A table node (columns ``iteration`` + one per loss, one row per logged iteration).

        ``history``: list of ``{"iteration", "losses"}`` (``TrainingState.history``); ``rows``:
        the indices of ``history`` to show (default all). Reuses ``table`` when given (its
        content is replaced). A loss missing in a row is NaN.
        """
        if table is None:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
            table.SetAttribute(NODE_ATTRIBUTE, "table")
        names = _loss_names(history)
        rows = range(len(history)) if rows is None else rows
        vtable = vtk.vtkTable()
        for column_name in ["iteration"] + names:
            column = vtk.vtkDoubleArray()
            column.SetName(column_name)
            vtable.AddColumn(column)
        _append_rows(vtable, names, (history[r] for r in rows))
        table.SetAndObserveTable(vtable)
        table.Modified()
        return table

    @staticmethod
    def display_rows(n, max_rows=MAX_LOSS_ROWS, recent=RECENT_LOSS_ROWS):
        """(indices of an ``n``-row history to show, stride of the older part).

        All rows while they fit in ``max_rows // 2``; beyond that the newest ``recent`` rows in
        full and every ``stride``-th older row, with the smallest power-of-two stride that brings
        the total to ``max_rows // 2`` or less — so new rows can then be appended ``max_rows // 2``
        times before the table must be thinned again.
        """
        budget = max_rows // 2
        if n <= budget:
            return list(range(n)), 1
        older = n - recent
        stride = 1
        while -(-older // stride) + recent > budget:
            stride *= 2
        return list(range(0, older, stride)) + list(range(older, n)), stride

    def update_loss_plot(self, scene, state, table=None, chart=None):
        """Bring the loss table and chart in ``scene`` up to date with ``state``; returns (table, chart).

        New history rows are appended to the table's columns; the table is rebuilt only when
        it is new (first use, or after a scene close), when a new loss appears, when a resume
        replaced logged rows, or when it outgrows :data:`MAX_LOSS_ROWS` (then its older rows
        are thinned, see :meth:`display_rows`). One plot series per loss (x: iteration), all in
        one chart node, created on first use and reused afterwards (also when passed in). The
        widget shows the chart with ``slicer.modules.plots.logic().ShowChartInLayout(chart)``.
        """
        history = state.history if isinstance(state, TrainingState) else list(state or [])
        edits = state.history_edits if isinstance(state, TrainingState) else None
        table = table or (self._table if _in_scene(scene, self._table) else None)
        chart = chart or (self._chart if _in_scene(scene, self._chart) else None)
        n = len(history)
        shown = self._shown
        if (shown is None or table is None or shown["table"] is not table or edits is None
                or shown["edits"] != edits or n < shown["consumed"]):
            shown = None
        # loss names in order of appearance; while only appending, only the new rows are read
        names = _loss_names(history) if shown is None else _loss_names(history[shown["consumed"]:], shown["names"])
        if (shown is None or shown["names"] != names
                or shown["rows"] + (n - shown["consumed"]) > MAX_LOSS_ROWS):
            rows, stride = self.display_rows(n)
            table = self.loss_table(scene, history, table, rows=rows)
            shown = {"table": table, "edits": edits, "names": names, "consumed": n, "rows": len(rows),
                     "stride": stride}
        elif n > shown["consumed"]:
            vtable = table.GetTable()
            _append_rows(vtable, names, history[shown["consumed"]:])
            shown["rows"] += n - shown["consumed"]
            shown["consumed"] = n
            vtable.Modified()
        self._shown = shown
        if chart is None:
            chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "DiCyc training losses")
            chart.SetAttribute(NODE_ATTRIBUTE, "chart")
            chart.SetTitle("DiCyc training losses")
            chart.SetXAxisTitle("iteration")
            chart.SetYAxisTitle("loss")
            chart.SetLegendVisibility(True)
        existing = {}
        for i in range(chart.GetNumberOfPlotSeriesNodes()):
            series = chart.GetNthPlotSeriesNode(i)
            if series is not None:
                existing[series.GetYColumnName()] = series
        for index, loss in enumerate(names):
            series = existing.get(loss)
            if series is None:
                series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", loss)
                series.SetAttribute(NODE_ATTRIBUTE, "series")
                series.SetXColumnName("iteration")
                series.SetYColumnName(loss)
                series.SetPlotType(series.PlotTypeScatter)
                series.SetLineStyle(series.LineStyleSolid)
                series.SetMarkerStyle(series.MarkerStyleCircle)
                series.SetMarkerSize(4)
                series.SetColor(*_PALETTE[index % len(_PALETTE)])
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
            if series.GetTableNodeID() != table.GetID():
                series.SetAndObserveTableNodeID(table.GetID())
        self._table, self._chart = table, chart
        if isinstance(state, TrainingState):
            state.history_changed = False
        return table, chart


def _append_rows(vtable, names, rows):
    """Append history rows to a loss vtkTable whose columns are ``iteration`` + ``names``."""
    columns = [vtable.GetColumn(c) for c in range(vtable.GetNumberOfColumns())]
    for row in rows:
        columns[0].InsertNextValue(float(row["iteration"]))
        losses = row["losses"]
        for c, loss in enumerate(names, start=1):
            value = losses.get(loss)
            columns[c].InsertNextValue(float("nan") if value is None else float(value))


def _in_scene(scene, node):
    return node is not None and scene is not None and scene.IsNodePresent(node)


def _number(value):
    """A number as the command line wants it: 8 not 8.0, 0.0002 not 2e-04."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
