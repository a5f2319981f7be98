"""Running a model on a volume node: in a background process a GUI timer follows, or in this process.

:class:`SynthesisLogic` writes the input node to a work folder (NRRD keeps the geometry in double
precision), starts ``python -m dicyc synthesize … --progress-jsonl`` as a
:class:`dicyc.background.BackgroundProcess`, reports progress without blocking, and places the
result in a volume node with exactly the input's IJK-to-RAS. :func:`synthesize_in_process` does
the same work in this process (scripts, tests, and the panel's foreground option).
"""

import shutil
import tempfile
from pathlib import Path

from DiCycCommonLib.nodes import copy_geometry, update_node_from_volume, volume_from_node
from dicyc.background import BackgroundProcess, dicyc_command
from dicyc.errors import DicycError

from .display import DEFAULT_CT_WINDOW, style_synthetic
from .models import target_domain

#: The temporary files of a background synthesis (NRRD keeps the geometry in double precision).
INPUT_NAME = "input.nrrd"
OUTPUT_NAME = "output.nrrd"
EVENTS_NAME = "progress.jsonl"
#: Output lines of the child kept for the panel's log view.
LOG_LINES = 200


def _output_node(scene, output_node, input_node, card, direction):
    if output_node is not None:
        if output_node.GetID() == input_node.GetID():
            raise DicycError("the output volume must not be the input volume; choose another or create a new one.")
        return output_node
    _, tgt = target_domain(card or {}, direction)
    label = str(tgt.get("name") or tgt.get("modality") or "synthetic")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{input_node.GetName()} synthetic {label}"))
    return node


def _place_result(scene, input_node, result, output_node, card, direction, ct_window):
    """Put ``result`` (a Volume on the input's grid) into an output node overlaying the input."""
    reference = volume_from_node(input_node, copy=False)
    if result.shape != reference.shape or not result.same_grid(reference, tol=1e-3):
        raise DicycError(
            f"the synthetic volume's grid {result.size} does not match the input {reference.size}; not placing it."
        )
    node = _output_node(scene, output_node, input_node, card, direction)
    update_node_from_volume(node, result)
    copy_geometry(node, input_node)  # bit-exact IJKToRAS of the input, whatever the file kept
    style_synthetic(scene, node, card, direction, ct_window)
    return node


def synthesize_in_process(scene, input_node, model_path, direction="a2b", device="auto", precision="auto", batch=8,
                          output_node=None, progress=None, ct_window=DEFAULT_CT_WINDOW):
    """Synthesise in this process (blocks; for scripts, tests and a fallback). Returns (node, info).

    The output node has exactly the input's IJKToRAS (and parent transform), and a CT window
    when the model's target is CT.
    """
    from dicyc.modelfile import load_model
    from dicyc.synthesize import synthesize_volume_with_info

    model = load_model(model_path, device="cpu")
    volume = volume_from_node(input_node)
    result, info = synthesize_volume_with_info(
        model, volume, direction=direction, device=device, precision=precision, batch=batch, progress=progress,
        name=f"volume {input_node.GetName()}",
    )
    node = _place_result(scene, input_node, result, output_node, model.card, direction, ct_window)
    return node, info


class SynthesisLogic:
    """Synthesis in a background process that a GUI timer follows.

    ``start`` writes the input node to a work folder and launches ``python -m dicyc synthesize
    … --progress-jsonl``; ``poll`` (call every ~200 ms) returns the progress; ``finish`` loads
    the result into a volume node; ``cancel`` kills the whole process tree. One run at a time.
    """

    def __init__(self, python=None):
        self.python = python
        self.process = None
        self.work_dir = None
        self._own_work_dir = False
        self.input_node_id = None
        self.card = None
        self.direction = "a2b"
        self.output_path = None
        self.fraction = 0.0
        self.eta_s = None
        self.last_message = ""
        self.log = []

    # ----------------------------------------------------------------- command
    @staticmethod
    def build_command(model_path, input_path, output_path, direction="a2b", device="auto", precision="auto", batch=8,
                      python=None, events_path=None):
        """The ``dicyc synthesize`` command line (a list); progress goes to ``events_path``
        (default: ``<output>.progress.jsonl`` beside the output)."""
        if events_path is None:
            events_path = Path(str(output_path) + ".progress.jsonl")
        return dicyc_command(
            "synthesize", "--model", model_path, "--input", input_path, "--output", output_path,
            "--direction", direction, "--device", device, "--precision", precision, "--batch", int(batch),
            "--progress-jsonl", events_path, python=python,
        )

    # ----------------------------------------------------------------- life cycle
    @property
    def running(self):
        return self.process is not None and self.process.running

    def start(self, scene, input_node, model_path, direction="a2b", device="auto", precision="auto", batch=8,
              work_dir=None, python=None, env=None):
        """Write the input, start the background synthesis, return the :class:`BackgroundProcess`.

        Cheap problems (no input, unreadable model card, a run already going) raise
        :class:`DicycError` here, before any process starts.
        """
        from dicyc.modelfile import read_card
        from dicyc.volume import check_finite_values, check_not_constant, write_volume

        if self.running:
            raise DicycError("a synthesis is already running; cancel it first.")
        if input_node is None:
            raise DicycError("select an input volume first.")
        if not model_path:
            raise DicycError("select a model first.")
        self.card = read_card(model_path)
        self.direction = direction
        volume = volume_from_node(input_node, copy=False)
        check_finite_values(volume, f"volume {input_node.GetName()}")
        check_not_constant(volume, f"volume {input_node.GetName()}")
        self._cleanup()
        if work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="dicyc-synthesis-"))
            self._own_work_dir = True
        else:
            self.work_dir = Path(work_dir)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._own_work_dir = False
        input_path = self.work_dir / INPUT_NAME
        self.output_path = self.work_dir / OUTPUT_NAME
        events_path = self.work_dir / EVENTS_NAME
        for stale in (self.output_path, events_path):
            if stale.exists():
                stale.unlink()
        write_volume(volume, input_path)
        command = self.build_command(model_path, input_path, self.output_path, direction, device, precision, batch,
                                     python=python or self.python, events_path=events_path)
        self.input_node_id = input_node.GetID()
        self.fraction, self.eta_s, self.last_message, self.log = 0.0, None, "starting…", []
        self.process = BackgroundProcess(command, events_path=events_path, env=env, cwd=str(self.work_dir))
        self.process.start()
        return self.process

    def poll(self):
        """Progress since the last call, never blocking.

        Returns a dict: ``running``, ``fraction`` (0…1), ``eta_s`` (or None), ``message`` (the
        latest line worth showing), ``events`` (the new events, logs included), ``returncode``
        and ``error`` (one sentence once it failed, else None).
        """
        if self.process is None:
            return {"running": False, "fraction": 0.0, "eta_s": None, "message": "", "events": [], "returncode": None,
                    "error": None}
        running = self.process.running  # checked first: the poll after exit gets everything
        events = self.process.poll()
        for event in events:
            kind = event.get("event")
            if kind == "iteration" and event.get("total_iterations"):
                self.fraction = min(1.0, float(event.get("iteration", 0)) / float(event["total_iterations"]))
                self.eta_s = event.get("eta_s")
                self.last_message = f"{event.get('iteration')}/{event['total_iterations']} slices"
            elif kind == "done":
                self.fraction = 1.0
                self.eta_s = 0.0
                self.last_message = "done"
            elif kind == "error":
                self.last_message = str(event.get("message", "failed"))
            elif kind == "start":
                self.last_message = "started"
            elif kind == "log":
                self.log.append(event.get("message", ""))
                del self.log[:-200]
        code = self.process.returncode
        return {
            "running": running,
            "fraction": self.fraction,
            "eta_s": self.eta_s,
            "message": self.last_message,
            "events": events,
            "returncode": code,
            "error": self.process.error_message() if (code not in (None, 0)) else None,
        }

    def wait(self, timeout=None):
        """Block until the process ends (scripts and tests only). Returns its exit status."""
        if self.process is None:
            raise DicycError("no synthesis was started.")
        return self.process.wait(timeout)

    def finish(self, scene, output_node=None, ct_window=DEFAULT_CT_WINDOW):
        """Load the finished result into ``output_node`` (a new node if None) and return it.

        The node gets the input's exact IJKToRAS and parent transform and, for a CT target, the
        CT window. Raises :class:`DicycError` with the process's one-sentence error if it failed.
        """
        from dicyc.volume import read_volume

        if self.process is None:
            raise DicycError("no synthesis was started.")
        if self.process.running:
            raise DicycError("the synthesis is still running.")
        self.poll()  # the last events and log lines
        input_node = scene.GetNodeByID(self.input_node_id) if self.input_node_id else None
        if self.process.returncode != 0:
            message = self.user_message(self.process.error_message() or f"exit status {self.process.returncode}",
                                        input_node)
            self._cleanup()
            raise DicycError(f"synthesis failed: {message}")
        if input_node is None:
            self._cleanup()
            raise DicycError("the input volume was removed from the scene during synthesis.")
        try:
            result = read_volume(self.output_path)
            node = _place_result(scene, input_node, result, output_node, self.card, self.direction, ct_window)
        finally:
            self._cleanup()
        return node

    def user_message(self, message, input_node=None):
        """The child's error line without its ``dicyc synthesize: error:`` prefix, naming the input
        volume instead of its temporary file."""
        text = str(message)
        prefix = "dicyc synthesize: error: "
        if text.startswith(prefix):
            text = text[len(prefix):]
        if self.work_dir is not None:
            name = f"volume {input_node.GetName()}" if input_node is not None else "the input volume"
            text = text.replace(str(self.work_dir / INPUT_NAME), name)
        return text

    def cancel(self):
        """Kill the whole process tree (returns once nothing is left) and remove the temporary files."""
        cancelled = False
        if self.process is not None:
            cancelled = self.process.cancel()
        self._cleanup()
        return cancelled

    def _cleanup(self):
        if self._own_work_dir and self.work_dir is not None and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if self._own_work_dir:
            self.work_dir = None
            self._own_work_dir = False
