"""Shipping a trained student: `student.pt`, the Python API, export and averaging.

`package` (the `student.pt` format and the one student loader), `api` (`load`, `Student`),
`export` (TorchScript / ONNX with the front-end, checked against eager PyTorch), `average`
(the mean of the last epochs' weights, BatchNorm statistics recomputed).
"""

from cmkd_cli.student.api import Prediction, Student, load

__all__ = ["Prediction", "Student", "load"]
