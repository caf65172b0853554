"""About / Method: what QShield is and is not, the caveats, the data, and how to reproduce every number."""

import streamlit as st

from pages import _shared as ui
from qshield_core import lab, viz

ui.sidebar()
st.title("About QShield")

st.markdown(
    """
**QShield** puts a small *quantum circuit* behind an ordinary image classifier (a convolutional neural
network, CNN) and asks whether the combination is harder to fool. It reproduces the paper *"QShield:
Securing Neural Networks Against Adversarial Attacks using Quantum Circuits"* (Azimi, Prakash, Wang,
Xiong, arXiv 2604.10933, 2026) on three image collections: handwritten digits (MNIST), abdominal CT
organ slices (OrganAMNIST) and small photos (CIFAR-10).

**Adversarial examples** are images changed by a tiny, carefully chosen amount (often invisible to
a person) so that a model gives the wrong answer. The **attack strength ε** is the largest change
allowed to any pixel, on a scale where 1 is the full black-to-white range (8/255 ≈ 3 %).

**How the hybrid works**, in four steps:
1. The CNN looks at the image and produces one score per class.
2. Those scores are turned into rotation angles of 4 simulated qubits.
3. The circuit entangles the qubits, adds a little hardware-like noise, and is measured: that gives a
   second probability for each class.
4. A small network decides, image by image, how much to trust each branch (the weight **α**: 1 means
   the CNN alone) and mixes the two answers.
"""
)

st.subheader("What QShield is not")
st.markdown(
    """
- **Not a quantum computer.** The circuit is *simulated* exactly on an ordinary CPU (a 4-qubit circuit
  is 16 numbers, or a 16×16 density matrix with noise). Nothing here ran on quantum hardware.
- **Not a certified defence.** The robust accuracies are measurements against specific attacks, and a
  stronger attack can always lower them. The only guarantees are on the *Certified* page: a proof about
  the circuit alone, and randomized smoothing, which certifies noise-trained copies of the models (not
  the shipped ones) within small L2 radii.
- **Not evidence that "quantum" makes a model robust** unless the model also holds up against attacks
  designed for it (below).
"""
)

st.subheader("The honest caveat: gradient masking")
st.markdown(
    """
Most attacks follow the model's **gradient**: they ask "which small change of the pixels raises the
error fastest?". The paper's published code computes the quantum branch in a way that **hides it from
the gradient**, and draws a **new random projection at every call**. Attacks that follow the gradient
then see only the CNN part plus random jitter. That makes the model *look* more robust than it is: a
known trap called **gradient masking** (Athalye, Carlini & Wagner, ICML 2018). It is like a lock that
seems strong because the burglar's usual tool does not fit it, not because it resists a burglar who
brings the right tool.

This app therefore offers two **gradient modes** of the same trained weights:
- `paper`: exactly the published behaviour (quantum branch cut from the gradient, random projection
  redrawn each call), i.e. the setting of the paper's tables.
- `differentiable`: a fixed projection and real gradients through the simulated circuit. This is the
  model an informed attacker uses: white-box attacks on it, examples **transferred** to the `paper`
  model (BPDA), expectation over the random projection (EOT), and gradient-free attacks (Square).
"""
)

st.markdown("#### What the adaptive attacks found")
summary = lab.adaptive_summary()
if summary is None:
    st.warning(
        "The adaptive-attack results (`results/adaptive.json`) are not in this checkout yet, so no "
        "numbers are shown here. Produce them with the command under *Reproduce every number* below."
    )
else:
    st.caption(f"From `{summary.source}` (n per cell in the table; 95 % Wilson intervals).")
    st.dataframe(viz.display_frame(summary.table), hide_index=True)

st.subheader("Where the data come from")
st.markdown(
    """
| dataset | loader | exact? |
|---|---|---|
| MNIST (28×28 digits, 10 classes) | `torchvision.datasets.MNIST` on the canonical idx files (MD5 checked) | yes |
| OrganAMNIST (MedMNIST v2, 28×28 CT, 11 organs) | `medmnist.OrganAMNIST` on `organamnist.npz` (SHA-256 checked) | yes |
| CIFAR-10 (32×32 photos, 10 classes) | `torchvision.datasets.ImageFolder` on a **JPEG re-encoding** | **no** |

The CIFAR-10 copy available offline here is a JPEG re-encoding of all 60,000 images: pixel values differ
slightly from the original dataset, so CIFAR-10 figures are **not** directly comparable with numbers
measured on the original files. The images in this app are the shipped samples (`assets/samples`: the
first 10 test images of every class, stored losslessly), so the app needs no dataset at all.
"""
)

st.subheader("The shipped models")
cards = lab.model_cards_frame()
if cards.empty:
    st.warning("No model cards found in `pretrained/` yet.")
else:
    st.dataframe(viz.display_frame(cards), hide_index=True)
    st.caption("Accuracies are measured on the full test split and read from each model's card "
               "(`pretrained/{dataset}-{model}.json`).")

st.subheader("Reproduce every number")
st.markdown("Every figure in this app is read from a file that one of these commands writes:")
st.code(lab.REPRODUCE_COMMANDS, language="bash")
records, _ = lab.load_results()
commands = lab.recorded_commands(records)
if commands:
    with st.expander(f"The {len(commands)} commands recorded in the committed results files"):
        st.code("\n".join(commands), language="bash")
