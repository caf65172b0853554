"""Circuit designs: a named :class:`~qshield_core.quantum.CircuitConfig` in a JSON file.

A design file (``designs/*.json``, read by ``python -m qshield_core train --model hybrid --circuit FILE``)::

    {
      "name": "depth3-trainable-p0.05",          optional; default: the file's name
      "description": "free text",                optional
      "circuit": {                               any subset of CircuitConfig's fields
        "n_qubits": 4,                           default: the dataset's max(2, ceil(log2 C))
        "encoding": "enhanced",                  "enhanced" (RX, RY, RZ per qubit) or "angle" (RY)
        "entanglement": "full",                  none, linear, ring, star, full
        "depth": 3,                              layers of [trainable Rot, CNOTs, noise]
        "variational": true,                     trainable Rot gates in every layer
        "noise": {"kind": "depolarizing", "p": 0.05, "readout": 0.0, "t1": 5e-05, "t2": 7e-05, "gate_time": 5e-08},
        "noise_placement": "every_layer",        or "end": the noise once, after the last layer
        "shots": null,                           or S > 0: the output estimated from S shots
        "device": null                           or {"backend": "kolkata", "qubits": null}, or a resolved one
      }
    }

A model trained from a design is named ``hybrid-<name>`` and saved in ``user_models/``; its card
stores the whole resolved circuit (``CircuitConfig.to_dict``, a device's calibration numbers
included), so it loads without the design file or the calibration package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .data import get_spec
from .quantum import CircuitConfig
from .simulator import qubits_for_classes

DESIGN_KEYS = ("name", "description", "circuit")


@dataclass(frozen=True)
class Design:
    """A named circuit design; ``circuit`` holds the fields it sets (unset ones take CircuitConfig's defaults)."""

    name: str
    circuit: dict = field(default_factory=dict)
    description: str = ""
    source: str | None = None

    def with_overrides(self, **overrides) -> Design:
        """The design with some circuit fields replaced (None values are ignored; ``noise`` merges key by key)."""
        circuit = dict(self.circuit)
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "noise":
                circuit["noise"] = dict(circuit.get("noise") or {}, **value)
            else:
                circuit[key] = value
        return replace(self, circuit=circuit)

    def config_for(self, dataset: str) -> CircuitConfig:
        """The resolved circuit for ``dataset``: its qubit count by default, checked to hold its classes."""
        spec = get_spec(dataset)
        data = dict(self.circuit)
        data.setdefault("n_qubits", qubits_for_classes(spec.num_classes))
        config = CircuitConfig.from_dict(data)
        if 2 ** config.n_qubits < spec.num_classes:
            raise ValueError(f"Design {self.name!r}: {config.n_qubits} qubits measure {2 ** config.n_qubits} "
                             f"outcomes, fewer than {spec.display_name}'s {spec.num_classes} classes.")
        return config

    def card_entry(self) -> dict:
        """What a model card records about the design besides the circuit itself."""
        return {"name": self.name, "description": self.description, "source": self.source}


def load_design(path: str | Path) -> Design:
    """Read a design file (module docstring); unknown keys and bad circuit fields are refused by name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Design file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Design file {path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("circuit", {}), dict):
        raise ValueError(f"Design file {path}: expected an object with a 'circuit' object.")
    unknown = sorted(set(data) - set(DESIGN_KEYS))
    if unknown:
        raise ValueError(f"Design file {path}: unknown key(s) {unknown}; known: {', '.join(DESIGN_KEYS)}.")
    return Design(str(data.get("name") or path.stem), dict(data.get("circuit", {})), str(data.get("description", "")),
                  str(path))


def design_to_json(design: Design, config: CircuitConfig | None = None) -> str:
    """A design file's text: the design's own fields, or with ``config`` the whole resolved circuit."""
    circuit = design.circuit if config is None else config.to_dict()
    return json.dumps({"name": design.name, "description": design.description, "circuit": circuit}, indent=2) + "\n"
