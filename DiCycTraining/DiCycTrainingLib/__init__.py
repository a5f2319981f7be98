"""Logic of the DiCyc Training module, apart from any widget.

Everything here takes the MRML scene as a parameter and imports only numpy, VTK, Slicer's MRML
classes and the ``dicyc`` engine (no qt, ctk or ScriptedLoadableModule), so the pytest suites
run it under the ``slicer-core`` wheel as well as inside 3D Slicer.
"""

from DiCycTrainingLib.logic import TrainingLogic, TrainingState, volume_from_node  # noqa: F401
