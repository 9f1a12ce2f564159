"""About: the method, the paper's Table 2 reproduced, the memory rules and both accountings, measured vs
modelled, references."""

import streamlit as st

from app_pages import _cache
from tinytl_core import engine, paper
from tinytl_core.memory import accounting, rules
from tinytl_core.ui.figures import lite_residual_dot
from tinytl_core.ui.text import docstring_markdown, layer_kinds_markdown

st.header("About TinyTL Lab")
st.markdown(
    """
TinyTL Lab lets you **see and measure** that the memory of fine-tuning is dominated by the activations
saved for the backward pass, and that **TinyTL** (Cai, Gan, Zhu, Han — *TinyTL: Reduce Memory, Not
Parameters for Efficient On-Device Learning*, NeurIPS 2020) removes most of it.

### Why activations, not parameters
For a layer $y = aW + b$ the weight gradient $\\frac{\\partial L}{\\partial W} = a^\\top
\\frac{\\partial L}{\\partial y}$ needs the layer's **input** $a$, so training a weight means keeping its
input until backward. The bias gradient $\\frac{\\partial L}{\\partial b} = \\frac{\\partial L}{\\partial y}$
and the input gradient $\\frac{\\partial L}{\\partial a} = \\frac{\\partial L}{\\partial y} W^\\top$ need no
stored input. Freezing the weights and training the biases (TinyTL-B)
therefore removes most stored activations — non-linearities still need something: ReLU a 1-bit mask,
smooth activations (sigmoid, h-swish, SiLU) their input.
"""
)
st.markdown("### The lite residual branch (TinyTL-L)")
st.graphviz_chart(lite_residual_dot(), width="stretch")
st.markdown(
    """
Bias-only training cannot change the features much, so TinyTL adds a small **lite residual** branch beside
each block's frozen main branch (Eq. 4):
"""
)
st.latex(r"a_{i+1} = \mathcal{F}_{W}(a_i) + b + \mathcal{F}_{w_r}\big(\mathrm{reduce}(a_i)\big)")
st.markdown(
    """
- it works at **half resolution** (2x2 average pooling, upsampled back): 4x fewer activations;
- it uses a **5x5 group convolution** (2 groups) and a 1x1 conv **without the 6x expansion** of an inverted
  bottleneck: (6·2+1)/(1+1) = 6.5x fewer channels;
- together about **26x smaller** activations than the block it accompanies; its last norm's scale starts at
  zero, so training starts from the pretrained function.

TinyTL-L+B (the paper's default) trains the lite residual branches, every bias and the classifier.
"""
)
st.markdown(
    """
### Modes
| mode | trains | stores for backward |
|---|---|---|
| Full fine-tuning | everything | every layer's input |
| Last layer | the classifier | the classifier's input only |
| Norm + last | normalisation scale/shift + classifier | inputs of the norms + what non-linearities need |
| TinyTL-B | every bias + classifier | masks / inputs of non-linearities |
| TinyTL-L | lite residual branches + classifier | the branches' own small activations + non-linearities |
| TinyTL-L+B | branches + biases + classifier | as TinyTL-L |

### Measured vs modelled
- **Modelled** numbers are computed from shapes: the model is traced on PyTorch's `meta` device (nothing
  allocated), so even a billion-parameter ViT is analysed in seconds. Two activation columns: *necessary*
  (TinyTL's rules below) and *stock PyTorch* (what autograd saves by default for each traced op).
- **Measured** numbers come from one real training step (forward, backward, optimizer step): every tensor
  autograd saves for backward is counted once per storage and attributed to the layer running. On CUDA the
  peak allocated memory is recorded too.
- Stock PyTorch stores much more than necessary — a conv keeps its input even with a frozen weight,
  BatchNorm keeps its input even with frozen statistics, ReLU keeps a float tensor — so bias-only training
  measured with stock PyTorch saves little (users of the paper's code saw under 10%). The **training
  engine** swaps layers for autograd functions that keep only what the gradients need; the Memory
  Explorer measures both.
"""
)
st.markdown(
    """
### The paper's Table 2, reproduced
TinyTL's Table 2 gives each method's training memory on the paper's backbone, ProxylessNAS-Mobile (batch 8,
224 px; one row at 320 px), in the paper's accounting: peak activation of one sample x batch + parameters
(frozen ones at 8 bits), as the public script's profiler computes it. The library rebuilds the script's
network for each method and accounts it (rules P1-P3 below); the last column is the step peak of the same
mode as this tool trains it on its engine: fp32 weights, Adam, gradients and working set, what a real step
needs.
"""
)
table2 = _cache.paper_table_slot()
start = st.empty()
if "rows" not in table2 and start.button(
    "Reproduce Table 2", icon=":material/calculate:", help="About 20 s once per server, then kept."
):
    start.empty()
    bar = st.progress(0.0, text="Tracing the paper's network on the meta device...")
    rows = paper.paper_table(
        step_peak=paper.StepPeak.MODELLED,
        rows=paper.TABLE2,
        progress=lambda done, total, method: bar.progress(done / total, text=f"{method} ({done}/{total})"),
    )
    bar.empty()
    table2["rows"] = rows
if "rows" in table2:
    st.markdown(paper.format_paper_table(table2["rows"]))
    st.caption(
        "MB = 10^6 bytes. Engine step peak: modelled by the complete accounting (meta device); "
        "`python benchmarks/paper.py` measures it on one real step per row."
    )
with st.expander("How Table 2 is reproduced, and what each convention changes", icon=":material/difference:"):
    st.markdown(docstring_markdown(paper.__doc__))
with st.expander("The memory rules, as the code applies them", icon=":material/rule:", expanded=True):
    st.markdown(docstring_markdown(rules.__doc__))
with st.expander("What a layer is: the layer-kinds table", icon=":material/table:"):
    st.caption("One table (tinytl_core.layer_kinds) that the memory rules and the training engine both read.")
    st.markdown(layer_kinds_markdown())
with st.expander("The two accountings: complete and paper", icon=":material/calculate:"):
    st.markdown(docstring_markdown(accounting.__doc__))
    st.caption(
        "As a calibration point, the paper reports 802 MB for fully fine-tuning ResNet-50 at batch 8, 224 px."
    )
with st.expander("The training engine", icon=":material/settings:"):
    st.markdown(docstring_markdown(engine.__doc__))
st.markdown(
    """
### References
- H. Cai, C. Gan, L. Zhu, S. Han. *TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
  Learning.* NeurIPS 2020. [arXiv:2007.11622](https://arxiv.org/abs/2007.11622) ·
  [code](https://github.com/mit-han-lab/tinyml/tree/master/tinytl)
- H.-Y. Chiang, N. Frumkin, F. Liang, D. Marculescu. *MobileTL: On-Device Transfer Learning with
  Inverted Residual Blocks.* AAAI 2023. [arXiv:2212.03246](https://arxiv.org/abs/2212.03246): trained
  norm shifts, h-swish backward through a 1-bit sign mask -- the mode `mobiletl` here (rule 6).
- Later work: J. Lin et al.,
  *On-Device Training Under 256KB Memory* (NeurIPS 2022, sparse updates and a tiny training engine);
  memsave_torch (arXiv:2404.12406, layers that skip saving inputs of frozen weights).
- Backbones from [timm](https://github.com/huggingface/pytorch-image-models).
"""
)
