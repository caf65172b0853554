"""Write the example circuit designs of the design study under ``designs/``.

``paper-full`` is the paper's own circuit (hybrid-full's: depth 1, no trainable gate, its mixed noise
at p = 0.005), so that the design study trains it over seeds by the same command as the others. The
rest are depth 3 with trainable ``Rot`` layers and full entanglement on the dataset's 4 qubits:
the paper's mixed noise after every layer at p = 0.005, 0.05 and 0.2; the same at p = 0.05 once
after the last layer; p = 0.05 estimated from 1000 shots; and a real device's calibrated noise
(IBM Kolkata, qubits chosen by :func:`qshield_core.devices.choose_qubits`), stored resolved so that
the file needs no calibration package. The device design needs the ``devices`` extra to be written
(``make devices``); without it the other files are still written. Deterministic.

Usage: ``python scripts/make_designs.py [--device kolkata] [--out designs]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core.designs import Design, design_to_json
from qshield_core.devices import DEFAULT_DEVICE, DeviceUnavailableError
from qshield_core.quantum import CircuitConfig

BASE = {"n_qubits": 4, "encoding": "enhanced", "entanglement": "full", "depth": 3, "variational": True}


def mixed(p: float) -> dict:
    return {"kind": "mixed", "p": p, "readout": 0.0}


def designs(device: str) -> list[tuple[Design, bool]]:
    """(design, store it resolved) for every file."""
    paper = {"encoding": "enhanced", "entanglement": "full", "depth": 1, "variational": False,
             "noise": mixed(0.005)}
    out = [(Design("paper-full", paper, "The paper's circuit, as hybrid-full: enhanced encoding, full entanglement, "
                   "depth 1, no trainable gate, the mixed noise at p = 0.005."), False)]
    out += [(Design(f"depth3-trainable-p{p:g}", dict(BASE, noise=mixed(p)),
                   f"Depth 3, trainable layers, the paper's mixed noise at p = {p:g} after every layer."), False)
           for p in (0.005, 0.05, 0.2)]
    out.append((Design("depth3-trainable-p0.05-end", dict(BASE, noise=mixed(0.05), noise_placement="end"),
                       "As depth3-trainable-p0.05, the noise once after the last layer instead of after every layer."),
                False))
    out.append((Design("depth3-trainable-p0.05-shots1000", dict(BASE, noise=mixed(0.05), shots=1000),
                       "As depth3-trainable-p0.05, the output estimated from 1000 shots (a randomised model)."), False))
    out.append((Design(f"depth3-trainable-device-{device}",
                       dict(BASE, noise={"kind": "none", "p": 0.0, "readout": 0.0},
                            device={"backend": device, "qubits": None}),
                       f"Depth 3, trainable layers, IBM {device.capitalize()}'s calibrated noise after every gate and "
                       "its readout confusion (qshield_core/devices.py); no other noise."), True))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=DEFAULT_DEVICE)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "designs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for design, resolved in designs(args.device):
        try:
            config = CircuitConfig.from_dict(design.circuit)  # validates every design; resolves the device
        except DeviceUnavailableError as err:
            print(f"skipped {design.name}: {err}", file=sys.stderr)
            continue
        path = args.out / f"{design.name}.json"
        path.write_text(design_to_json(design, config if resolved else None))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
