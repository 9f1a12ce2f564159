"""Adapt: queue the selected backbone in one or several modes and follow your runs live (layout only).

Each mode is one job in the queue; worker processes train them (``tinytl_core.jobs``), never this app's
process. A session sees its own jobs -- place in line, progress, curves, results -- and cancels only its
own; a fragment polls the store every couple of seconds while one of them is queued or running, through
the session's ``JobWatch`` (reads only new events; redraws the curves only when one arrived).
"""

import streamlit as st

from app_pages import _cache
from app_pages._guard import guarded
from tinytl_core.adapt import OPTIMIZERS, AdaptConfig, resolve_device
from tinytl_core.data import list_datasets
from tinytl_core.jobs import JobQueue
from tinytl_core.modes import MODES, approximation_note
from tinytl_core.results import MEMORY, RUN, run_quantity
from tinytl_core.ui import checks
from tinytl_core.ui.jobs import JobWatch, NotYourJobError, SessionJobs, cancel_job, submit_modes
from tinytl_core.ui.sparse import SchemeSource, check_scheme_text, default_scheme_check

UPLOAD = "upload"
POLL_SECONDS = 2.0

settings = _cache.settings()
backbone, resolution, batch_size = settings.backbone, settings.resolution, settings.batch_size
pretrained, session_id = settings.pretrained, settings.session_id
queue = JobQueue()
watch: JobWatch = st.session_state.setdefault("ad_watch", JobWatch())  # this session's reads across polls


def render_jobs(mine: SessionJobs, *, live: bool) -> None:
    """This session's jobs: progress and Cancel of the waiting and running ones, curves, results."""
    st.subheader("Your runs")
    st.caption(mine.queue_text(_cache.pool_size()))
    for view in mine.views:
        job = view.job
        if job.ended:
            continue
        left, right = st.columns([5, 1], vertical_alignment="center")
        left.progress(min(1.0, job.fraction), text=view.line())
        if right.button(
            "Cancel",
            icon=":material/stop_circle:",
            key=f"cancel_{job.id}",
            width="stretch",
            disabled=job.cancel_requested,
        ):
            try:
                cancel_job(queue, job.id, session_id)
            except NotYourJobError as exc:  # cannot happen for a session's own list; said, not raised
                st.error(str(exc), icon=":material/lock:")
            st.rerun()
    if mine.active:
        st.caption(
            "You can switch pages or close the tab: the runs go on in the workers and this page picks "
            "them up again. A cancelled run is kept as *cancelled*."
        )
    ended = [v for v in mine.views if v.job.ended]
    latest = ended[-3:]
    if latest and not mine.active:
        cards = st.columns(max(3, len(latest)))
        accuracy, modelled = run_quantity(RUN.final_val_acc), run_quantity(MEMORY.total_modelled_bytes)
        for card, view in zip(cards, latest):
            r = view.job.result or {}
            memory = r.get(modelled.name)
            card.metric(
                f"{MODES[view.job.config.mode].title} · {view.status}"
                + (f" · run #{view.job.run_id}" if view.job.run_id is not None else ""),
                accuracy.text(r.get(accuracy.name), missing="–"),
                delta=None if memory is None else f"{modelled.text(memory)} (modelled)",
                delta_color="off",
                delta_arrow="off",
                border=True,
                help="Validation accuracy at the end of the run, and its training memory.",
            )
    chart = watch.curves(mine)
    if chart is not None:
        st.caption("Loss and accuracy per step (dotted: running training accuracy; markers: validation).")
        st.vega_lite_chart(*chart, key="ad_curves")
    st.dataframe(watch.results(mine), hide_index=True, width="stretch", key="ad_results", placeholder="–")
    for view in ended:
        title = f"{view.name.capitalize()}, {MODES[view.job.config.mode].title}"
        if view.unsuccessful:
            st.error(f"{title} {view.status}: {view.error}", icon=":material/error:")
        result = view.job.result or {}
        for note in result.get("notes") or []:
            st.info(f"{title}: {note}", icon=":material/info:")
        if result.get("memory_error"):
            st.caption(f"{title}: memory figures unavailable ({result['memory_error']})")
        if view.job.config.pretrained and result and not result.get("pretrained_loaded"):
            st.warning(f"{title} weights: {result.get('backbone_message', '')}", icon=":material/cloud_off:")
    if live and not mine.active:
        st.rerun(scope="app")  # every run ended: redraw the page once, without polling
    if not mine.active and any(v.job.run_id for v in ended):
        st.page_link(
            "app_pages/compare_runs.py",
            label="See every stored run, everyone's, on Compare runs",
            icon=":material/scatter_plot:",
        )


st.header("Adapt")
weights = "pretrained weights" if pretrained else "random initialisation"
# the batch the runs will train at: 1 when the settings below ask for it (read before they are drawn)
one = st.session_state.get("ad_group_norm") and st.session_state.get("ad_batch_one")
st.caption(
    f"**{backbone}** · {resolution} px · batch {1 if one else batch_size} · {weights} (change them in the "
    "sidebar). "
    f"Runs are queued and trained by worker processes on {resolve_device('auto')}."
)


@guarded  # a fragment reruns outside the page: it gets the page's guard itself
def live_panel() -> None:
    render_jobs(watch.read(queue, session_id), live=True)


mine = watch.read(queue, session_id)
if mine.active:
    st.fragment(live_panel, run_every=POLL_SECONDS)()
    st.divider()
elif mine.views:
    render_jobs(mine, live=False)
    st.divider()
else:
    st.caption(mine.queue_text(_cache.pool_size()))

# ------------------------------------------------------------------------------------------ the form
if mine.views:
    st.subheader("New run")
datasets = {d.name: d for d in list_datasets()}
options = [*datasets, UPLOAD]


def dataset_title(name: str) -> str:
    if name == UPLOAD:
        return "Your images: upload a .zip of class folders"
    info = datasets[name]
    return info.title if info.kind == "builtin" else f"{info.title} (download {info.download_size})"


left, right = st.columns([3, 2])
with left:
    dataset = st.selectbox(
        "Dataset", options, key="ad_dataset", format_func=dataset_title, persist_state="session"
    )
    dataset_path: str | None = None
    if dataset == UPLOAD:
        upload = st.file_uploader("A .zip with one folder of images per class", type=["zip"], key="ad_upload")
        if upload is not None:
            with st.spinner("Reading the archive..."):
                checked = checks.check_upload(upload.name, upload.getvalue())  # once per content
            if checked.path is not None:
                dataset_path = str(checked.path)
                st.success(checked.summary, icon=":material/folder_zip:")
            else:
                st.error(checked.error, icon=":material/error:")
            st.caption(f":material/inventory_2: {checked.kept}")
    else:
        info = datasets[dataset]
        st.caption(info.description)
        if info.kind != "builtin":
            st.caption(
                ":material/cloud_download: Downloaded (once) into the data folder; offline, the run "
                "stops with a message. The built-in sets need no network."
            )
    modes = st.multiselect(
        "Modes (trained one after the other)",
        list(MODES),
        default=["last", "bias", "lite_residual+bias"],
        key="ad_modes",
        format_func=lambda m: MODES[m].title,
        persist_state="session",
    )
    if note := approximation_note(modes):
        st.caption(f":material/info: {note}")
    scheme_check = None  # the sparse-update scheme, when mode sparse is selected
    if "sparse" in modes:
        source = st.radio("Sparse-update scheme", SchemeSource.ALL, horizontal=True, key="ad_scheme_source")
        if source == SchemeSource.UPLOAD:
            file = st.file_uploader("Scheme (.json)", type=["json"], key="ad_scheme_file")
            scheme_check = check_scheme_text(file.getvalue(), backbone) if file is not None else None
        elif source == SchemeSource.PASTE:
            text = st.text_area(
                "Scheme (JSON)",
                placeholder='{"bias_blocks": 8, "weights": {"conv_head": "1/4"}}',
                key="ad_scheme_text",
                help="bias_blocks: biases of the last k blocks train; weights: layer name -> ratio of its "
                "output channels (1/8, 1/4, 1/2 or 1). `python -m tinytl_core sparse-search` proposes one.",
            )
            scheme_check = check_scheme_text(text, backbone) if text.strip() else None
        else:
            scheme_check = default_scheme_check(backbone)
        if scheme_check is None:
            st.caption(":material/info: Give a scheme, or choose the default.")
        elif scheme_check.error:
            st.error(scheme_check.error, icon=":material/error:")
        else:
            st.caption(f":material/tune: Sparse update trains the classifier and {scheme_check.description}.")
with right:
    steps = st.number_input(
        "Steps per mode",
        min_value=1,
        max_value=100_000,
        value=60,
        step=10,
        key="ad_steps",
        persist_state="session",
    )
    lr = st.number_input(
        "Learning rate",
        min_value=1e-6,
        max_value=1.0,
        value=1e-3,
        step=1e-4,
        format="%.5f",
        key="ad_lr",
        persist_state="session",
    )
    eval_every = st.number_input(
        "Evaluate every N steps (0 = only at the end)",
        min_value=0,
        max_value=100_000,
        value=20,
        step=5,
        key="ad_eval_every",
        persist_state="session",
    )
with st.expander("More options"):
    a, b, c = st.columns(3)
    optimizer = a.selectbox(
        "Optimizer",
        OPTIMIZERS,
        key="ad_optimizer",
        persist_state="session",
        help="Adam as in the paper, or SGD with momentum 0.9.",
    )
    label_smoothing = a.slider(
        "Label smoothing", 0.0, 0.9, 0.1, 0.05, key="ad_smoothing", persist_state="session"
    )
    seed = a.number_input(
        "Seed", min_value=0, max_value=2**31 - 1, value=0, key="ad_seed", persist_state="session"
    )
    shots = b.number_input(
        "Training images per class (0 = all)",
        min_value=0,
        max_value=100_000,
        value=0,
        key="ad_shots",
        persist_state="session",
    )
    val_cap = b.number_input(
        "Validation images per class (0 = all)",
        min_value=0,
        max_value=100_000,
        value=20,
        key="ad_val_cap",
        persist_state="session",
        help="Fewer makes evaluation faster.",
    )
    augment = b.toggle(
        "Augmentation (random crops, flips)", value=True, key="ad_augment", persist_state="session"
    )
    group_norm = c.toggle(
        "GroupNorm + weight standardisation",
        key="ad_group_norm",
        persist_state="session",
        help="The paper's recipe for batch size 1: BatchNorm normalises with the statistics of the batch, "
        "and the statistics of one image are meaningless; GroupNorm normalises each image on its own, and "
        "standardised conv weights keep it trainable. A pretrained BatchNorm backbone's features change.",
    )
    batch_one = c.toggle(
        "Batch size 1 (the paper's on-device setting)",
        key="ad_batch_one",
        persist_state="session",
        disabled=not group_norm,
        help="Train one image per step instead of the sidebar's batch size: needs GroupNorm + weight "
        "standardisation (batch statistics of one image are meaningless).",
    )
    if group_norm and batch_one:
        batch_size = 1
    weight_bits = c.selectbox(
        "Frozen weights",
        (32, 8),
        format_func=lambda bits: "float (32-bit)" if bits == 32 else "8-bit codes (k-means, 256 per layer)",
        key="ad_weight_bits",
        persist_state="session",
        help="8-bit: every frozen conv and linear weight stored as 8-bit codes with a 256-entry codebook "
        "per layer, dequantised on the fly (about 4x less weight memory). Compare runs shows the "
        "accuracy effect (column 'weight bits').",
    )
    record_memory = c.toggle(
        "Record memory figures",
        value=True,
        key="ad_memory",
        persist_state="session",
        help="Modelled training memory of each mode, for the memory-accuracy plot.",
    )
    measure_memory = c.toggle(
        "... and measure one real step",
        value=True,
        key="ad_measure",
        persist_state="session",
        disabled=not record_memory,
    )

start = st.button("Start training", type="primary", icon=":material/play_arrow:", key="ad_start")
if start:
    errors = checks.run_problems(
        backbone=backbone,
        resolution=resolution,
        batch_size=batch_size,
        modes=modes,
        dataset_ready=dataset != UPLOAD or dataset_path is not None,
        resolution_problem=_cache.resolution_problem(backbone, resolution),
        mode_table=lambda: _cache.reports(
            backbone, resolution, batch_size, optimizer, "complete", group_norm
        )[0],
        device=resolve_device("auto"),
    )
    if "sparse" in modes and (scheme_check is None or not scheme_check.ok):
        errors = [*errors, "Mode sparse needs a valid scheme (see above), or choose the default scheme."]
    configs = []
    if not errors:
        configs = [
            AdaptConfig(
                backbone=backbone,
                mode=m,
                dataset=dataset_path or dataset,
                steps=int(steps),
                batch_size=batch_size,
                lr=float(lr),
                optimizer=optimizer,
                label_smoothing=float(label_smoothing),
                seed=int(seed),
                resolution=resolution,
                pretrained=pretrained,
                group_norm=group_norm,
                weight_bits=int(weight_bits),
                augment=augment,
                shots=int(shots) or None,
                val_cap=int(val_cap) or None,
                eval_every=int(eval_every),
                record_memory=record_memory,
                measure_memory=record_memory and measure_memory,
                sparse_scheme=scheme_check.scheme.to_dict() if m == "sparse" and scheme_check else None,
            )
            for m in modes
        ]
        errors = checks.setup_problems(configs)  # each model on `meta`: refused here, not in a worker
    if errors:
        for error in errors:
            st.error(error, icon=":material/error:")
    else:
        label = dataset_title(dataset) if dataset != UPLOAD else upload.name
        try:
            ids = submit_modes(queue, configs, owner=session_id, label=label)
        except ValueError as exc:
            st.error(f"Cannot start: {exc}", icon=":material/error:")
        else:
            ahead = queue.position(ids[0])
            st.toast(f"Queued {len(ids)} run(s); {max(0, (ahead or 1) - 1)} job(s) ahead of them.")
            st.rerun()
