"""The reference rows that use real data, registered like methods.

Installed as ``datafree.baselines``. Each YAML file here is a method entry:

* ``scratch``: a model trained from scratch on the original data (the papers'
  "T. Scratch" / "S. Scratch" rows; also the default recipe of ``datafree train-teacher``);
* ``scratch_cmi``: the CMI repository's scratch training, ``train-teacher --recipe cmi``
  (docs/teachers.md);
* ``kd_real``: KD from the teacher with the original training data, the upper
  bound a data-free method chases.
"""

import glob
import os

from datafree.methods import register_method
from datafree.registry import METHODS

for _path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "*.yaml"))):
    _name = os.path.splitext(os.path.basename(_path))[0]
    if _name not in METHODS:
        register_method(_name, _path)
